"""`python -m benchmarks --only unet-call`: sd_cli's and diffusers' UNet calls alternating in one
process, optionally with GroupNorm's other candidates (`--groupnorm-variants`)."""

import statistics
from pathlib import Path

from benchmarks.compare import _device_name, _diffusers_pipeline, _sync, alternate, summarize


def bench_unet_calls(st: Path, device: str, precision: str, rounds: int, calls: int = 10,
                     groupnorm_variants: bool = False) -> dict:
    """One UNet call (512² image, CFG batch 2), sd_cli's and diffusers' on the same weights in one
    process, alternating `rounds` times `calls` calls each.

    Meant for GPUs: an eager GPU call is bound by the host's kernel launches, and sharing a process
    gives both the same host core, which separate processes do not (see bench.bench_steps). Neither side
    runs under sd_cli's allocator setting here, so on the CPU the step figure is the one to read.
    With `groupnorm_variants`, sd_cli also runs with GroupNorm's other candidates (GROUPNORM_VARIANTS),
    with how far each moves the UNet's output.
    """
    import torch

    from sd_cli.runtime.device import resolve_device, resolve_dtype
    from sd_cli.loading.loader import load_model

    dev = resolve_device(device)
    dtype = resolve_dtype(precision, dev)
    model = load_model(st, device=dev, dtype=dtype).model
    unet = _diffusers_pipeline(st, dev, dtype).unet
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 64, 64, generator=generator).to(dev, dtype)
    context = torch.randn(2, 77, 768, generator=generator).to(dev, dtype)
    t = torch.tensor([500, 500], device=dev)
    runs = {"sd_cli": lambda: model.unet(x, t, context),
            "diffusers": lambda: unet(x, t, encoder_hidden_states=context)}
    if groupnorm_variants:
        runs.update({f"sd_cli_groupnorm_{name}": _with_groupnorm(name, runs["sd_cli"]) for name in GROUPNORM_VARIANTS})
    with torch.inference_mode():
        times = alternate(runs, rounds, calls, lambda: _sync(dev))
        if groupnorm_variants:
            reference = runs["sd_cli"]().float()
            moved = {name: float((run().float() - reference).abs().max())
                     for name, run in runs.items() if name.startswith("sd_cli_groupnorm_")}
    result = summarize(times["sd_cli"], times["diffusers"], "s/call")
    result["round_medians"] = {name: [round(statistics.median(ts[i:i + calls]), 5) for i in range(0, len(ts), calls)]
                               for name, ts in times.items()}
    if groupnorm_variants:
        result["median_s"] = {name: round(statistics.median(ts), 5) for name, ts in times.items()}
        result["max_abs_diff_from_sd_cli"] = moved
    return {"call": result, "device": _device_name(dev), "precision": str(dtype).removeprefix("torch.")}


# GroupNorm32's candidates besides its own (float32 statistics, float32 weight and bias made once):
# the same with the weight and bias cast at every call (sd_cli before the seventh session), and
# the input's dtype throughout, which on CUDA is the device's own fp16 kernel (what diffusers runs).
GROUPNORM_VARIANTS = ("cast_per_call", "input_dtype")


def _with_groupnorm(variant: str, run):
    import torch.nn.functional as F

    from sd_cli.models.attention import GroupNorm32

    def cast_per_call(self):
        return self.weight.float(), self.bias.float()

    def input_dtype(self, x):
        return F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)

    def patched_run():
        saved = GroupNorm32.float_affine, GroupNorm32.forward
        if variant == "cast_per_call":
            GroupNorm32.float_affine = cast_per_call
        else:
            GroupNorm32.forward = input_dtype
        try:
            return run()
        finally:
            GroupNorm32.float_affine, GroupNorm32.forward = saved

    return patched_run
