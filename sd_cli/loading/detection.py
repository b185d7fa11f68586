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
# generative-models' layout: the text towers under conditioner.embedders.N (loading/sgm_config.py).
SGM_BIGG_AT_1_KEY = "conditioner.embedders.1.model.token_embedding.weight"  # SDXL base: CLIP-L at 0, bigG at 1
SGM_OPENCLIP_AT_0_KEY = "conditioner.embedders.0.model.token_embedding.weight"  # refiner (bigG), SD-Turbo (H)
LABEL_EMBEDDING_KEY = "model.diffusion_model.label_emb.0.0.weight"  # the UNet's vector input y
UNET_INPUT_KEY = "model.diffusion_model.input_blocks.0.0.weight"
EMA_UNET_INPUT_KEY = "model_ema.diffusion_modelinput_blocks00weight"  # LitEma drops the dots
DEPTH_PREFIX = "depth_model."
TEXT_ENCODER_NAMES = {"clip": "SD 1.x (CLIP text encoder)", "openclip": "SD 2.x (OpenCLIP text encoder)",
                      "sdxl": "SDXL (CLIP-L and OpenCLIP bigG)", "sdxl-refiner": "SDXL refiner (OpenCLIP bigG)",
                      "sgm-openclip": "SD 2.1 in generative-models' layout (SD-Turbo)"}

# Key prefixes of models sd_cli does not run -> what the file is. Checked in order.
FOREIGN_MODELS = (
    (("model.diffusion_model.joint_blocks.",), "a Stable Diffusion 3 checkpoint (MMDiT joint_blocks)"),
    (("double_blocks.", "model.diffusion_model.double_blocks."), "a Flux checkpoint (double_blocks)"),
    (("noise_augmentor.", "embedder.model.visual."), "an SD 2.1 unCLIP checkpoint"),
)
# Key prefixes of files with no UNet at all -> what the file is and where it goes instead.
NOT_A_MODEL = (
    (("lora_unet_", "lora_te_"), "a LoRA, not a checkpoint; pass it with --lora (or <lora:name:weight> in the prompt)"),
    (("encoder.conv_in.", "decoder.conv_in.", "first_stage_model.encoder.conv_in."),
     "a VAE file, not a whole checkpoint; pass it with --vae beside --ckpt"),
    (("control_model.", "input_hint_block.", "controlnet_cond_embedding."),
     "a ControlNet, not a whole checkpoint; pass it with --control-net beside --ckpt (an SD 1.5 checkpoint)"),
    (("emb_params", "string_to_param."), "a textual-inversion embedding, not a checkpoint; put it in the "
                                         "embeddings folder (--embeddings) and use its name in the prompt"),
)


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
    ("openclip", 7, False): Family("the SD 2 x4 upscaler", "x4-upscaling.yaml"),
    ("openclip", 5, False): Family("SD 2.x depth (no MiDaS weights: depth2img needs --depth-model or --depth-map)",
                                   "v2-midas-inference.yaml"),
    ("sdxl", 4, False): Family("SDXL", "sd_xl_base.yaml"),
    ("sdxl-refiner", 4, False): Family("the SDXL refiner", "sd_xl_refiner.yaml"),
    ("sgm-openclip", 4, False): Family("SD 2.1 in generative-models' layout (SD-Turbo)", "sd_2_1.yaml"),
}


def fingerprint(state_dict) -> tuple[str | None, int | None, bool]:
    text = _text_fingerprint(state_dict)
    unet_input = state_dict.get(UNET_INPUT_KEY, state_dict.get(EMA_UNET_INPUT_KEY))  # an EMA-only file: its shadow
    unet_in = unet_input.shape[1] if unet_input is not None else None
    has_depth = any(key.startswith(DEPTH_PREFIX) for key in state_dict)
    return text, unet_in, has_depth


def _text_fingerprint(state_dict) -> str | None:
    """The text conditioning by where its towers sit: ModelConfig.text_encoder's values."""
    if any(key in state_dict for key in CLIP_EMBEDDING_KEYS):
        return "clip"
    if OPENCLIP_EMBEDDING_KEY in state_dict:
        return "openclip"
    if SGM_BIGG_AT_1_KEY in state_dict:
        return "sdxl"
    if SGM_OPENCLIP_AT_0_KEY in state_dict:
        return "sdxl-refiner" if LABEL_EMBEDDING_KEY in state_dict else "sgm-openclip"
    return None


def detect_family(state_dict, checkpoint_name: str) -> Family:
    text, unet_in, has_depth = fingerprint(state_dict)
    family = FAMILIES.get((text, unet_in, has_depth))
    if family is None and text is None and unet_in is not None:
        raise CheckpointError(f"{checkpoint_name}: holds a UNet but no text encoder (no cond_stage_model.* or "
                              "conditioner.embedders.* token embedding), so it is not a whole Stable Diffusion "
                              "checkpoint; pass the full checkpoint")
    if family is None:
        seen = f"text encoder {text or 'not found'}, UNet input channels {unet_in or 'not found'}" + (
            ", depth weights" if has_depth else "")
        raise CheckpointError(f"{checkpoint_name}: cannot tell which model this is ({seen}); pass its YAML with --config")
    return family


def refuse_foreign(state_dict, checkpoint_name: str) -> None:
    """A file of a model sd_cli does not run, or not a model at all, is named for what it is."""
    for prefixes, what in FOREIGN_MODELS:
        if any(key.startswith(prefixes) for key in state_dict):
            raise CheckpointError(f"{checkpoint_name}: is {what}; sd_cli runs Stable Diffusion 1.x, 2.x and SDXL "
                                  "checkpoints: pass one of those with --ckpt")
    if any(key.startswith(("model.diffusion_model.", "model_ema.")) for key in state_dict):
        return
    for prefixes, what in NOT_A_MODEL:
        if any(key.startswith(prefixes) for key in state_dict):
            raise CheckpointError(f"{checkpoint_name}: is {what}")


def check_config_fits(state_dict, config, checkpoint_name: str, advice: str) -> None:
    """The weights' text encoder and UNet input must be the config's: else say what each is and what to pass."""
    from sd_cli.models.families import family_of

    text, unet_in, has_depth = fingerprint(state_dict)
    if text is None:
        raise CheckpointError(f"{checkpoint_name}: has no text encoder weights (no cond_stage_model.* or "
                              "conditioner.embedders.* token embedding); is it a whole Stable Diffusion checkpoint?")
    if text == config.text_encoder and unet_in in (None, config.unet_in_channels):
        return
    weights = FAMILIES.get((text, unet_in, has_depth))
    what = weights.description if weights else TEXT_ENCODER_NAMES[text]
    channels = f", UNet with {unet_in} input channels" if unet_in is not None else ""
    wanted = f"; {advice}" + (f" (sd_cli's own is {weights.config_name})" if weights else "")
    raise CheckpointError(f"{checkpoint_name} holds {what} weights{channels}, but config {config.source} is for "
                          f"{family_of(config).description} (UNet with {config.unet_in_channels} input channels)"
                          f"{wanted}")


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
