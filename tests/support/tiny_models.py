"""Tiny random-weight checkpoints in the exact original format, for tests.

Same key names and YAML structure as the released SD files, small dims: the original YAMLs from
configs/ with their sizes shrunk, UNet/VAE weights from seeded random init, text towers from
transformers' CLIPTextModel (SD 1.x, Hugging Face names) or open_clip's text tower (SD 2.x),
the noise-schedule buffers at the root, and for SD 1.x EMA shadow weights under model_ema.*.
The sgm families (SDXL base, its refiner, SD-Turbo's sgm SD 2.1) are sgm DiffusionEngine files:
model.diffusion_model.*, first_stage_model.*, conditioner.embedders.N.* and denoiser.sigmas.
The .ckpt files are pickled like Lightning's: {"state_dict", "global_step", "callbacks"} with a
reference to pytorch_lightning's ModelCheckpoint class (without pytorch_lightning installed).
"""

import sys
import types
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

CONFIGS = Path(__file__).resolve().parents[2] / "sd_cli" / "data" / "configs"
TEXT_WIDTH = 64
TEXT_LAYERS = 2

FAMILIES = {
    # name: (original YAML, UNet input channels)
    "sd1": ("v1-inference.yaml", 4),
    "sd2": ("v2-inference.yaml", 4),
    "sd2-v": ("v2-inference-v.yaml", 4),
    "sd1-inpaint": ("v1-inpainting-inference.yaml", 9),
    "sd2-inpaint": ("v2-inpainting-inference.yaml", 9),
    "sd2-depth": ("v2-midas-inference.yaml", 5),  # with a tiny MiDaS under depth_model.model.* (tiny_midas.py)
    "sd2-x4": ("x4-upscaling.yaml", 7),  # the x4 upscaler: VAE factor 4, label_emb, low_scale_model.* buffers
}
SGM_FAMILIES = {
    # name: (original YAML, tiny network_config sizes)
    "sdxl": ("sd_xl_base.yaml", dict(channel_mult=[1, 2, 2], transformer_depth=[1, 1, 2])),
    "sdxl-refiner": ("sd_xl_refiner.yaml", dict(channel_mult=[1, 2, 2, 2], transformer_depth=2)),
    "sd-turbo": ("sd_2_1.yaml", dict(channel_mult=[1, 2])),
}
SGM_CLIP = "sgm.modules.encoders.modules.FrozenCLIPEmbedder"
SGM_OPENCLIP_G = "sgm.modules.encoders.modules.FrozenOpenCLIPEmbedder2"
SGM_OPENCLIP_H = "sgm.modules.encoders.modules.FrozenOpenCLIPEmbedder"
CLIP_L_LAYERS = 12  # ViT-L's block count, so the YAML's layer_idx 11 stays as it is
BIGG_WIDTH, BIGG_LAYERS, BIGG_PROJECTION = 128, 3, 96  # 2 heads of 64; a projection narrower than the width


def tiny_config(family: str) -> dict:
    """The family's original YAML with tiny dims (structure and targets unchanged)."""
    yaml_name, in_channels = FAMILIES[family]
    config = OmegaConf.to_container(OmegaConf.load(CONFIGS / yaml_name))
    params = config["model"]["params"]
    params["image_size"] = 8  # native 64 px
    unet = params["unet_config"]["params"]
    unet.update(model_channels=32, channel_mult=[1, 2], num_res_blocks=1, attention_resolutions=[1, 2],
                context_dim=TEXT_WIDTH, in_channels=in_channels)
    if "num_heads" in unet:
        unet["num_heads"] = 2
    else:
        unet["num_head_channels"] = 16
    ddconfig = params["first_stage_config"]["params"]["ddconfig"]
    ddconfig.update(ch=32, ch_mult=[1, 1, 2, 2], num_res_blocks=1)
    if family == "sd2-x4":
        unet["disable_self_attentions"] = [True, False]  # one level attending to the text in attn1, one not
        ddconfig["ch_mult"] = [1, 1, 2]  # downsampling by 4, as the released VAE
    return config


def tiny_sgm_config(family: str) -> dict:
    """An sgm YAML with tiny dims: the text widths above, the UNet's context and vector widths to match."""
    yaml_name, unet_sizes = SGM_FAMILIES[family]
    config = OmegaConf.to_container(OmegaConf.load(CONFIGS / yaml_name))
    params = config["model"]["params"]
    embedders = params["conditioner_config"]["params"]["emb_models"]
    unet = params["network_config"]["params"]
    unet.update(model_channels=32, num_head_channels=16, **unet_sizes)
    context_dim = sum(_tiny_text_width(entry["target"]) for entry in embedders if entry["input_key"] == "txt")
    # the refiner's YAML lists the context width once per transformer block of a level
    listed = isinstance(unet["context_dim"], list)
    unet["context_dim"] = [context_dim] * len(unet["context_dim"]) if listed else context_dim
    if "adm_in_channels" in unet:
        unet["adm_in_channels"] = sum(_vector_width(entry) for entry in embedders)
    ddconfig = params["first_stage_config"]["params"]["ddconfig"]
    ddconfig.update(ch=32, ch_mult=[1, 1, 2, 2], num_res_blocks=1)
    return config


def _tiny_text_width(target: str) -> int:
    return BIGG_WIDTH if target == SGM_OPENCLIP_G else TEXT_WIDTH


def _vector_width(embedder: dict) -> int:
    """An embedder's part of the UNet's y: bigG's pooled vector, or outdim per embedded number."""
    if embedder["target"] == SGM_OPENCLIP_G:
        return BIGG_PROJECTION
    if embedder["input_key"] == "txt":
        return 0
    numbers = 1 if embedder["input_key"] == "aesthetic_score" else 2
    return numbers * embedder["params"]["outdim"]


def _unet_vae_weights(config: dict, seed: int) -> dict:
    from sd_cli.models.unet import UNetModel
    from sd_cli.models.vae import AutoencoderKL

    params = config["model"]["params"]
    torch.manual_seed(seed)
    unet = UNetModel(**params.get("unet_config", params.get("network_config"))["params"])
    vae_params = dict(params["first_stage_config"]["params"])
    vae = AutoencoderKL(ddconfig=vae_params["ddconfig"], embed_dim=vae_params["embed_dim"])
    weights = {f"model.diffusion_model.{k}": v for k, v in unet.state_dict().items()}
    weights.update({f"first_stage_model.{k}": v for k, v in vae.state_dict().items()})
    return weights


def clip_text_weights(seed: int, prefix: str = "cond_stage_model.transformer.", layers: int = TEXT_LAYERS,
                      random_norms: bool = False) -> dict:
    """A CLIP ViT-L-style text tower: a transformers CLIPTextModel's weights under `prefix` (SD 1.x's default).

    random_norms: LayerNorm weights and all biases away from HF's 1 and 0, so a test is not blind to them.
    """
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    model = CLIPTextModel(CLIPTextConfig(hidden_size=TEXT_WIDTH, intermediate_size=4 * TEXT_WIDTH,
                                         num_hidden_layers=layers, num_attention_heads=1,
                                         max_position_embeddings=77, vocab_size=49408, hidden_act="quick_gelu"))
    state = model.state_dict()
    if random_norms:
        state = {k: v + 0.1 * torch.randn_like(v) if v.is_floating_point() and v.dim() == 1 else v
                 for k, v in state.items()}
    # The original names are CLIPTextModel's as of transformers 4.19: everything under text_model.
    weights = {f"{prefix}text_model.{k.removeprefix('text_model.')}": v for k, v in state.items()}
    weights[f"{prefix}text_model.embeddings.position_ids"] = torch.arange(77)[None]
    return weights


def openclip_text_weights(seed: int, prefix: str = "cond_stage_model.model.", width: int = TEXT_WIDTH,
                          layers: int = TEXT_LAYERS + 1, output_dim: int = TEXT_WIDTH) -> dict:
    """An OpenCLIP text tower: open_clip's text transformer weights under `prefix` (SD 2.x's default)."""
    from open_clip.transformer import TextTransformer

    torch.manual_seed(seed)
    tower = TextTransformer(context_length=77, vocab_size=49408, width=width, heads=max(1, width // 64),
                            layers=layers, output_dim=output_dim)
    state = tower.state_dict()
    # Random LayerNorm and embedding scales so the test is not blind to them.
    for key, value in state.items():
        if value.is_floating_point():
            state[key] = value + 0.02 * torch.randn_like(value)
    weights = {f"{prefix}{k}": v for k, v in state.items() if k != "attn_mask"}
    weights[f"{prefix}logit_scale"] = torch.tensor(4.6052)
    return weights


def conditioner_weights(config: dict, seed: int) -> dict:
    """Every text tower of an sgm YAML's conditioner under conditioner.embedders.N.*, with its own seed."""
    weights = {}
    embedders = config["model"]["params"]["conditioner_config"]["params"]["emb_models"]
    for index, entry in enumerate(embedders):
        prefix = f"conditioner.embedders.{index}."
        if entry["target"] == SGM_CLIP:
            weights.update(clip_text_weights(seed + index, prefix + "transformer.", CLIP_L_LAYERS, random_norms=True))
        elif entry["target"] == SGM_OPENCLIP_G:
            weights.update(openclip_text_weights(seed + index, prefix + "model.", BIGG_WIDTH, BIGG_LAYERS,
                                                 BIGG_PROJECTION))
        elif entry["target"] == SGM_OPENCLIP_H:
            weights.update(openclip_text_weights(seed + index, prefix + "model."))
    return weights


def denoiser_sigmas() -> dict:
    """DiscreteDenoiser's buffer: LegacyDDPMDiscretization's 1000 sigmas, ascending, computed as sgm does."""
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    alphas_cumprod = np.cumprod(1.0 - betas.numpy())
    return {"denoiser.sigmas": torch.tensor((1 - alphas_cumprod) / alphas_cumprod, dtype=torch.float32) ** 0.5}


def schedule_buffers(config: dict) -> dict:
    params = config["model"]["params"]
    betas = np.linspace(params["linear_start"] ** 0.5, params["linear_end"] ** 0.5, 1000, dtype=np.float64) ** 2
    alphas_cumprod = np.cumprod(1 - betas)
    prev = np.append(1.0, alphas_cumprod[:-1])
    as_tensor = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
    return {"betas": as_tensor(betas), "alphas_cumprod": as_tensor(alphas_cumprod),
            "alphas_cumprod_prev": as_tensor(prev), "sqrt_alphas_cumprod": as_tensor(np.sqrt(alphas_cumprod)),
            "sqrt_one_minus_alphas_cumprod": as_tensor(np.sqrt(1 - alphas_cumprod))}


def low_scale_buffers(config: dict) -> dict:
    """ImageConcatWithNoiseAugmentation's registered schedule, as the released x4 file stores it."""
    schedule = config["model"]["params"]["low_scale_config"]["params"]["noise_schedule_config"]
    betas = np.linspace(schedule["linear_start"] ** 0.5, schedule["linear_end"] ** 0.5, 1000, dtype=np.float64) ** 2
    alphas_cumprod = np.cumprod(1 - betas)
    arrays = {"betas": betas, "alphas_cumprod": alphas_cumprod, "alphas_cumprod_prev": np.append(1.0, alphas_cumprod[:-1]),
              "sqrt_alphas_cumprod": np.sqrt(alphas_cumprod), "sqrt_one_minus_alphas_cumprod": np.sqrt(1 - alphas_cumprod),
              "log_one_minus_alphas_cumprod": np.log(1 - alphas_cumprod),
              "sqrt_recip_alphas_cumprod": np.sqrt(1 / alphas_cumprod),
              "sqrt_recipm1_alphas_cumprod": np.sqrt(1 / alphas_cumprod - 1)}
    return {f"low_scale_model.{k}": torch.tensor(v, dtype=torch.float32) for k, v in arrays.items()}


def ema_shadows(weights: dict, seed: int) -> dict:
    """model_ema.* as LitEma stores them: parameter names without dots, slightly different values."""
    g = torch.Generator().manual_seed(seed)
    shadows = {"model_ema.decay": torch.tensor(0.9999), "model_ema.num_updates": torch.tensor(1000)}
    for key, value in weights.items():
        if key.startswith("model.diffusion_model."):
            shadow = "model_ema." + key[len("model."):].replace(".", "")
            shadows[shadow] = value + 0.01 * torch.randn(value.shape, generator=g)
    return shadows


def tiny_sgm_state_dict(family: str, seed: int = 0) -> tuple[dict, dict]:
    config = tiny_sgm_config(family)
    weights = _unet_vae_weights(config, seed)
    weights.update(conditioner_weights(config, seed + 1))
    weights.update(denoiser_sigmas())
    return weights, config


def tiny_state_dict(family: str, seed: int = 0, ema: bool = False) -> tuple[dict, dict]:
    if family in SGM_FAMILIES:
        if ema:
            raise ValueError("the released sgm files carry no EMA weights")
        return tiny_sgm_state_dict(family, seed)
    config = tiny_config(family)
    weights = _unet_vae_weights(config, seed)
    text = "openclip" if family.startswith("sd2") else "clip"
    weights.update(clip_text_weights(seed + 1) if text == "clip" else openclip_text_weights(seed + 1))
    weights.update(schedule_buffers(config))
    if ema:
        weights.update(ema_shadows(weights, seed + 2))
    if family == "sd2-x4":
        weights.update(low_scale_buffers(config))
    if family == "sd2-depth":
        from tiny_midas import tiny_dpt_weights

        weights.update({f"depth_model.model.{k}": v for k, v in tiny_dpt_weights(seed + 3).items()})
    return weights, config


def save_lightning_ckpt(weights: dict, path: Path, global_step: int = 470000) -> None:
    """torch.save a dict shaped like a Lightning 1.4 checkpoint, callbacks keyed by the PL class."""
    module_name = "pytorch_lightning.callbacks.model_checkpoint"
    fake = types.ModuleType(module_name)

    class ModelCheckpoint:  # stands in for the real class only while pickling
        pass

    ModelCheckpoint.__module__ = module_name
    ModelCheckpoint.__qualname__ = "ModelCheckpoint"
    fake.ModelCheckpoint = ModelCheckpoint
    saved = {name: sys.modules.get(name) for name in ("pytorch_lightning", "pytorch_lightning.callbacks", module_name)}
    for name in saved:
        sys.modules[name] = fake
    try:
        torch.save({"epoch": 6, "global_step": global_step, "pytorch-lightning_version": "1.4.2",
                    "state_dict": weights, "callbacks": {ModelCheckpoint: {"best_model_score": None}}}, path)
    finally:
        for name, previous in saved.items():
            if previous is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = previous


def write_tiny_checkpoint(family: str, folder: Path, fmt: str = "ckpt", seed: int = 0, ema: bool = False,
                          yaml_beside: bool = True, stem: str | None = None) -> Path:
    """Write <folder>/<stem>.<fmt> (and <stem>.yaml beside it unless yaml_beside is False)."""
    weights, config = tiny_state_dict(family, seed, ema)
    folder.mkdir(parents=True, exist_ok=True)
    stem = stem or f"tiny-{family}"
    path = folder / f"{stem}.{fmt}"
    if fmt == "safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in weights.items()}, str(path))
    else:
        save_lightning_ckpt(weights, path)
    if yaml_beside:
        OmegaConf.save(OmegaConf.create(config), folder / f"{stem}.yaml")
    return path
