"""Device and precision choices: one place turns the user's words into torch objects."""

from sd_cli.errors import UsageError

PRECISIONS = ("auto", "fp32", "fp16", "bf16")
# The original scripts' spellings: `full` is plain fp32, `autocast` meant fp16 on CUDA.
PRECISION_ALIASES = {"full": "fp32", "autocast": "auto", "float32": "fp32", "float16": "fp16", "half": "fp16",
                     "bfloat16": "bf16"}


def resolve_device(name: str):
    import torch

    if name in ("auto", None, ""):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for but torch sees no CUDA GPU; use --device cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError("--device mps was asked for but MPS is not available; use --device cpu")
    return device


def normalize_precision(precision: str) -> str:
    value = PRECISION_ALIASES.get(precision, precision)
    if value not in PRECISIONS:
        raise UsageError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)} (or full, autocast)")
    return value


def resolve_dtype(precision: str, device):
    """auto is fp16 on CUDA and fp32 elsewhere (CPU fp16 is slow and MPS fp16 is not always stable)."""
    import torch

    value = normalize_precision(precision)
    if value == "auto":
        value = "fp16" if device.type == "cuda" else "fp32"
    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[value]
