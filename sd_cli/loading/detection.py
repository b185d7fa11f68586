"""Which original config fits a checkpoint: a fingerprint table over key names and shapes.

Only what the weights encode is read from them (text width, UNet input channels, depth keys).
SD 2.x eps vs v-prediction is not encoded in any shape, so it is measured with one UNet call
(is_v_prediction) instead of guessed.
"""

from dataclasses import dataclass

import torch

from sd_cli.errors import CheckpointError

CLIP_EMBEDDING_KEYS = (
    "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight",
    "cond_stage_model.transformer.embeddings.token_embedding.weight",
)
OPENCLIP_EMBEDDING_KEY = "cond_stage_model.model.token_embedding.weight"
UNET_INPUT_KEY = "model.diffusion_model.input_blocks.0.0.weight"
DEPTH_PREFIX = "depth_model."


@dataclass(frozen=True)
class Family:
    description: str
    config_name: str
    measure_v: bool = False  # eps vs v must be measured after loading


# (text encoder, UNet input channels, has depth weights) -> family
FAMILIES = {
    ("clip", 4, False): Family("SD 1.x", "v1-inference.yaml"),
    ("clip", 9, False): Family("SD 1.x inpainting", "v1-inpainting-inference.yaml"),
    ("openclip", 4, False): Family("SD 2.x", "v2-inference.yaml", measure_v=True),
    ("openclip", 9, False): Family("SD 2.x inpainting", "v2-inpainting-inference.yaml"),
    ("openclip", 5, True): Family("SD 2.x depth", "v2-midas-inference.yaml"),
    ("openclip", 5, False): Family("SD 2.x depth (no MiDaS weights: depth2img needs --depth-model or --depth-map)",
                                   "v2-midas-inference.yaml"),
}


def fingerprint(state_dict) -> tuple[str | None, int | None, bool]:
    if any(key in state_dict for key in CLIP_EMBEDDING_KEYS):
        text = "clip"
    elif OPENCLIP_EMBEDDING_KEY in state_dict:
        text = "openclip"
    else:
        text = None
    unet_in = state_dict[UNET_INPUT_KEY].shape[1] if UNET_INPUT_KEY in state_dict else None
    has_depth = any(key.startswith(DEPTH_PREFIX) for key in state_dict)
    return text, unet_in, has_depth


def detect_family(state_dict, checkpoint_name: str) -> Family:
    text, unet_in, has_depth = fingerprint(state_dict)
    family = FAMILIES.get((text, unet_in, has_depth))
    if family is None:
        seen = f"text encoder {text or 'not found'}, UNet input channels {unet_in or 'not found'}" + (
            ", depth weights" if has_depth else "")
        raise CheckpointError(f"{checkpoint_name}: cannot tell which model this is ({seen}); pass its YAML with --config")
    return family


@torch.no_grad()
def is_v_prediction(unet, context_dim: int, device, dtype) -> tuple[bool, float]:
    """One UNet call on a constant input at t=999 (AUTOMATIC1111's test for SD 2.x).

    At the noisiest timestep an ε-model predicts roughly its input back, so mean(out - x) ≈ 0;
    a v-model predicts about -x₀ there, far below it. Returns (is_v, the measured mean).
    """
    x = torch.full((1, 4, 8, 8), 0.5, device=device, dtype=dtype)
    context = torch.full((1, 2, context_dim), 0.5, device=device, dtype=dtype)
    t = torch.tensor([999], device=device)
    measured = (unet(x, t, context).float() - x.float()).mean().item()
    return measured < -1.0, measured
