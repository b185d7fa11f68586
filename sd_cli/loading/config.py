"""Original OmegaConf model configs → a plain ModelConfig; the one allow-list of config targets.

The original code imports whatever `target` a YAML names. We never do: every target must be in
ALLOWED_TARGETS, which names the sd_cli role that implements it. OmegaConf objects stay here.
"""

from dataclasses import dataclass, field
from pathlib import Path

from sd_cli.errors import UsageError
from sd_cli.loading import sgm_config

# Original target path -> the sd_cli role that implements it.
ALLOWED_TARGETS = {
    "ldm.models.diffusion.ddpm.LatentDiffusion": "txt2img",
    "ldm.models.diffusion.ddpm.LatentInpaintDiffusion": "inpaint",
    "ldm.models.diffusion.ddpm.LatentDepth2ImageDiffusion": "depth",
    "ldm.models.diffusion.ddpm.LatentUpscaleDiffusion": "upscale",  # the SD 2 x4 upscaler
    "ldm.modules.diffusionmodules.upscaling.ImageConcatWithNoiseAugmentation": "noise-augmentation",
    "ldm.modules.diffusionmodules.openaimodel.UNetModel": "unet",
    "ldm.models.autoencoder.AutoencoderKL": "vae",
    "ldm.modules.encoders.modules.FrozenCLIPEmbedder": "clip",
    "ldm.modules.encoders.modules.FrozenOpenCLIPEmbedder": "openclip",
    "ldm.modules.midas.api.MiDaSInference": "midas",
    "torch.nn.Identity": "identity",  # the VAE's training loss, unused at inference
    # generative-models (sgm_config.py): SDXL, its refiner, SD-Turbo
    "sgm.models.diffusion.DiffusionEngine": "engine",
    "sgm.modules.diffusionmodules.denoiser.DiscreteDenoiser": "discrete-denoiser",
    "sgm.modules.diffusionmodules.denoiser_scaling.EpsScaling": "eps",
    "sgm.modules.diffusionmodules.denoiser_scaling.VScaling": "v",
    "sgm.modules.diffusionmodules.discretizer.LegacyDDPMDiscretization": "legacy-ddpm",
    "sgm.modules.diffusionmodules.openaimodel.UNetModel": "unet",
    "sgm.modules.GeneralConditioner": "conditioner",
    "sgm.modules.encoders.modules.FrozenCLIPEmbedder": "clip",
    "sgm.modules.encoders.modules.FrozenOpenCLIPEmbedder": "openclip",
    "sgm.modules.encoders.modules.FrozenOpenCLIPEmbedder2": "openclip-pooled",
    "sgm.modules.encoders.modules.ConcatTimestepEmbedderND": "size-embedding",
    "sgm.models.autoencoder.AutoencoderKL": "vae",
    "sgm.models.autoencoder.AutoencoderKLInferenceWrapper": "vae",
    # lllyasviel/ControlNet (docs/controlnet.md): ControlLDM is a LatentDiffusion with a control_stage_config,
    # its ControlledUnetModel the UNet taking the ControlNet's residuals
    "cldm.cldm.ControlLDM": "txt2img",
    "cldm.cldm.ControlledUnetModel": "unet",
    "cldm.cldm.ControlNet": "controlnet",
}
MODEL_KINDS = ("txt2img", "inpaint", "depth", "upscale")
TEXT_ENCODERS = ("clip", "openclip")

# Training-only keys of the model params; inference ignores them, as the original scripts do.
_TRAINING_ONLY = {
    "base_learning_rate", "num_timesteps_cond", "log_every_t", "first_stage_key", "cond_stage_key",
    "channels", "cond_stage_trainable", "monitor", "scheduler_config",
    "personalization_config", "finetune_keys", "ckpt_path", "ignore_keys", "load_only_unet",
    "use_positional_encodings", "loss_type", "learn_logvar", "logvar_init", "l_simple_weight",
    "original_elbo_weight", "v_posterior", "clip_denoised", "scale_by_std", "cosine_s",
    "given_betas", "make_it_fit", "reset_ema", "reset_num_ema_updates", "concat_keys",
    "masked_image_key", "keep_finetune_dims", "c_concat_log_start", "c_concat_log_end",
    "unet_trainable", "concat_mode", "num_classes", "low_scale_key", "noise_level_key",
    "control_key",  # ControlLDM: the training batch's key for the hint
}
# The conditioning_key each model class is built with (the original DiffusionWrapper's modes).
CONDITIONING_KEYS = {"txt2img": "crossattn", "upscale": "hybrid-adm"}  # the others: "hybrid"


@dataclass(frozen=True)
class ControlConfig:
    """A ControlLDM YAML's ControlNet: its control_stage_config params and how the UNet takes its residuals."""

    source: str
    params: dict  # cldm.cldm.ControlNet's params (UNet encoder sizes, hint_channels)
    only_mid_control: bool = False  # ControlLDM: the residuals join after the middle block only
    global_average_pooling: bool = False  # v1.1 shuffle: each residual averaged over its pixels


@dataclass(frozen=True)
class ModelConfig:
    """Everything sd_cli needs from an original model YAML."""

    source: str  # where the YAML came from, for messages
    kind: str  # "txt2img", "inpaint", "depth" or "upscale"
    parameterization: str  # "eps" or "v"
    linear_start: float
    linear_end: float
    timesteps: int
    scale_factor: float
    use_ema: bool
    unet_params: dict
    vae_params: dict  # {"ddconfig": {...}, "embed_dim": 4}
    text_encoder: str  # "clip" (SD 1.x) or "openclip" (SD 2.x)
    image_size: int  # latent side the model was trained at (64 for SD: 512 px)
    text_params: dict = field(default_factory=dict)
    depth_params: dict | None = None
    low_scale_params: dict | None = None  # the x4 upscaler's low_scale_config params (noise augmentation)
    engine: str = "ldm"  # whose code the YAML is for: "ldm" (CompVis/Stability) or "sgm" (generative-models)
    control: ControlConfig | None = None  # a ControlLDM YAML's ControlNet (lllyasviel/ControlNet's cldm_v15.yaml)

    @property
    def native_size(self) -> int:
        """Default image side in pixels: the latent size times the VAE's downsampling factor."""
        return self.image_size * 2 ** (len(self.vae_params["ddconfig"]["ch_mult"]) - 1)

    @property
    def unet_in_channels(self) -> int:
        return int(self.unet_params["in_channels"])


def load_config(path: str | Path) -> ModelConfig:
    from omegaconf import OmegaConf  # lazy: keeps `--help` fast

    path = Path(path)
    try:
        raw = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    except FileNotFoundError:
        raise UsageError(f"config not found: {path}; pass an existing YAML with --config") from None
    except Exception as err:  # OmegaConf/YAML errors: one line for the user
        raise UsageError(f"{path}: not a readable YAML config ({_first_line(err)})") from None
    return parse_config(raw, str(path))


def parse_config(raw: dict, source: str) -> ModelConfig:
    model = _section(raw, "model", source)
    if model.get("target") == sgm_config.ENGINE_TARGET:
        return ModelConfig(source=source, **sgm_config.parse_engine(model, source, _role))
    kind = _role(model, source, "model", MODEL_KINDS)
    params = dict(model.get("params") or {})
    unet = _component(params.pop("unet_config", None), source, "unet_config", ("unet",))
    vae = _component(params.pop("first_stage_config", None), source, "first_stage_config", ("vae",))
    text_section = params.pop("cond_stage_config", None)
    text_role = _role(text_section or {}, source, "cond_stage_config", TEXT_ENCODERS)
    depth = params.pop("depth_stage_config", None)
    if kind == "depth":
        depth = _component(depth, source, "depth_stage_config", ("midas",))
    low_scale = params.pop("low_scale_config", None)
    if kind == "upscale":
        low_scale = _component(low_scale, source, "low_scale_config", ("noise-augmentation",))
    vae.pop("lossconfig", None)
    vae.pop("monitor", None)
    control = _control_stage(params, source)
    config = ModelConfig(
        source=source,
        kind=kind,
        parameterization=str(params.pop("parameterization", "eps")),
        linear_start=float(params.pop("linear_start", 0.00085)),
        linear_end=float(params.pop("linear_end", 0.012)),
        timesteps=int(params.pop("timesteps", 1000)),
        scale_factor=float(params.pop("scale_factor", 1.0)),
        use_ema=bool(params.pop("use_ema", True)),
        unet_params=unet,
        vae_params=vae,
        text_encoder=text_role,
        image_size=int(params.pop("image_size", 64)),
        text_params=dict(text_section.get("params") or {}),
        depth_params=depth,
        low_scale_params=low_scale,
        control=control,
    )
    _check_leftovers(params, kind, source)
    if config.parameterization not in ("eps", "v"):
        raise UsageError(f"{source}: parameterization {config.parameterization!r} is not supported (eps or v)")
    return config


def _control_stage(params: dict, source: str) -> ControlConfig | None:
    """ControlLDM's control_stage_config and only_mid_control, taken out of the model params (None without)."""
    section = params.pop("control_stage_config", None)
    only_mid = bool(params.pop("only_mid_control", False))
    if section is None:
        return None
    control = _component(section, source, "control_stage_config", ("controlnet",))
    pooling = bool(control.pop("global_average_pooling", False))
    return ControlConfig(source=source, params=control, only_mid_control=only_mid, global_average_pooling=pooling)


def load_control_config(path: str | Path) -> ControlConfig:
    """The ControlNet of a ControlLDM YAML (cldm_v15.yaml, control_v11p_sd15_*.yaml); UsageError otherwise."""
    config = load_config(path)
    if config.control is None:
        raise UsageError(f"{path}: has no control_stage_config; pass a ControlNet YAML such as cldm_v15.yaml")
    return config.control


def _check_leftovers(params: dict, kind: str, source: str) -> None:
    conditioning = params.pop("conditioning_key", None)
    expected = CONDITIONING_KEYS.get(kind, "hybrid")
    if conditioning is not None and conditioning != expected:
        raise UsageError(f"{source}: conditioning_key {conditioning!r} does not fit {kind} models (expected {expected!r})")
    unknown = sorted(set(params) - _TRAINING_ONLY)
    if unknown:
        raise UsageError(f"{source}: unsupported model params {', '.join(unknown)}; is this a Stable Diffusion inference config?")


def _section(raw, key: str, source: str) -> dict:
    if not isinstance(raw, dict) or not isinstance(raw.get(key), dict):
        raise UsageError(f"{source}: no '{key}:' section; pass an original Stable Diffusion inference YAML")
    return raw[key]


def _role(section: dict, source: str, where: str, allowed: tuple[str, ...]) -> str:
    target = section.get("target") if isinstance(section, dict) else None
    if target is None:
        raise UsageError(f"{source}: {where} has no target")
    role = ALLOWED_TARGETS.get(target)
    if role is None:
        raise UsageError(f"{source}: {where} target {target!r} is not supported; sd_cli runs only the original Stable Diffusion classes")
    if role not in allowed:
        raise UsageError(f"{source}: {where} target {target!r} cannot be used there")
    return role


def _component(section, source: str, where: str, allowed: tuple[str, ...]) -> dict:
    if section is None:
        raise UsageError(f"{source}: model params lack {where}")
    _role(section, source, where, allowed)
    return dict(section.get("params") or {})


def _first_line(err: Exception) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__

