"""Checkpoint + config -> a ready LatentDiffusion: choose the config, build on meta, load strictly.

Strict means every tensor the model needs comes from the file and every tensor in the file is
used, except the known harmless extras listed here by name (EMA shadows, schedule buffers the
config already defines, unused text-tower parts). Anything else stops the run with the names.
"""

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch

from sd_cli import log
from sd_cli.loading.checkpoint import CheckpointFile, read_checkpoint
from sd_cli.loading.config import ModelConfig, load_config
from sd_cli.loading.packaged import packaged_config
from sd_cli.loading.strict import compare
from sd_cli.loading.detection import detect_family, is_v_prediction
from sd_cli.errors import CheckpointError, UsageError
from sd_cli.loading.mapped_pages import MappedFile
from sd_cli.models.empty import empty_modules
from sd_cli.models.families import family_of
from sd_cli.models.latent_diffusion import SCHEDULE_KEYS, LatentDiffusion, text_encoder_class

EMA_PREFIX = "model_ema."
UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_PREFIX = "cond_stage_model."
DEPTH_PREFIX = "depth_model.model."  # MiDaS, built on first use by depth.py


@dataclass
class LoadedModel:
    model: LatentDiffusion
    checkpoint_path: Path
    config_source: str
    global_step: int | None

    @property
    def name(self) -> str:
        return self.checkpoint_path.stem


def load_model(checkpoint_path, config_path=None, *, device="cpu", dtype=torch.float32, use_ema=False,
               offload: bool = False) -> LoadedModel:
    """With `offload`, the weights stay on the CPU and each part runs on `device` in turn (offload.py)."""
    path = Path(checkpoint_path)
    checkpoint = read_checkpoint(path)
    config, measure_v = choose_config(path, config_path, checkpoint)
    weights = select_weights(checkpoint.state_dict, use_ema, path.name)
    global_step = checkpoint.global_step
    del checkpoint  # from here on only `weights` holds the file's tensors
    home = "cpu" if offload else device
    model = build_and_load(config, weights, path.name, device=home, dtype=dtype, mapped_file=MappedFile(path),
                           channels_last_convs=torch.device(device).type == "cpu")
    model.eval()
    if offload:
        from sd_cli.runtime.offload import enable_offload

        enable_offload(model, device)
    if measure_v:
        model = _settle_parameterization(model, path.name)
    return LoadedModel(model, path, model.config.source, global_step)


def choose_config(path: Path, config_path, checkpoint: CheckpointFile) -> tuple[ModelConfig, bool]:
    """--config wins; then a YAML with the checkpoint's stem, beside it or among the packaged YAMLs (the built-in
    model's sd-cli-tiny.yaml is found that way); then the fingerprint table."""
    if config_path is not None:
        return load_config(config_path), False
    for candidate in (path.with_suffix(".yaml"), path.with_suffix(".yml"), packaged_config(path.stem + ".yaml")):
        if candidate.is_file():
            log.info(f"using config {candidate} (named after the checkpoint)")
            return load_config(candidate), False
    family = detect_family(checkpoint.state_dict, path.name)
    config_path = packaged_config(family.config_name)
    log.info(f"detected {family.description} from the checkpoint's weights; using {config_path}")
    return load_config(config_path), family.measure_v


def select_weights(state_dict: dict, use_ema: bool, name: str) -> dict:
    """The weights to load: the UNet's EMA shadows replace its live weights with --ema."""
    if not use_ema:
        return state_dict
    weights = dict(state_dict)
    missing = []
    for key in state_dict:
        if key.startswith(UNET_PREFIX):
            shadow = EMA_PREFIX + key[len("model."):].replace(".", "")
            if shadow in state_dict:
                weights[key] = state_dict[shadow]
            else:
                missing.append(shadow)
    if missing:
        raise CheckpointError(f"{name}: --ema asked for EMA weights but {len(missing)} are missing (e.g. {missing[0]}); "
                              "this file keeps only one set of weights: run without --ema")
    log.info(f"using the EMA weights of {name}")
    return weights


def build_and_load(config: ModelConfig, weights: dict, name: str, device="cpu", dtype=torch.float32,
                   mapped_file: MappedFile | None = None, channels_last_convs: bool = False) -> LatentDiffusion:
    if config.engine == "sgm":
        raise UsageError(f"{name}: {family_of(config).description} models (generative-models' DiffusionEngine, "
                         f"{config.source}) do not run in sd_cli yet; use an SD 1.x or 2.x checkpoint")
    encoder_class = text_encoder_class(config.text_encoder)
    with empty_modules():  # no random initialisation: every tensor comes from the file
        text_encoder = encoder_class.from_checkpoint(weights, **config.text_params)
        model = LatentDiffusion(config, text_encoder)
    module_weights, unexpected = _module_state_dict(weights, encoder_class, model.family.needs_depth)
    compare(model.state_dict(), module_weights, unexpected).raise_if_any(
        f"{name} does not match config {config.source}", sides="checkpoint vs config",
        hint=". Pass the config this checkpoint was made for with --config")
    _cast_in_place(module_weights, device, dtype, mapped_file, channels_last_convs)
    model.load_state_dict(module_weights, strict=True, assign=True)
    model.alphas_cumprod = _schedule(weights, config)
    # The depth model's MiDaS weights, kept as they are until depth2img builds it (timm is imported only then).
    if model.family.needs_depth:
        model.depth_weights = {key[len(DEPTH_PREFIX):]: value for key, value in weights.items()
                               if key.startswith(DEPTH_PREFIX)}
    return model


def _module_state_dict(weights: dict, encoder_class, depth: bool) -> tuple[dict, list[str]]:
    """Checkpoint keys -> module keys, plus the checkpoint keys nobody uses (reported, never dropped)."""
    text_weights, _ignored, text_unknown = encoder_class.module_state_dict_from_checkpoint(weights)
    module = {TEXT_PREFIX + key: value for key, value in text_weights.items()}
    unexpected = list(text_unknown)
    for key, value in weights.items():
        if key.startswith((UNET_PREFIX, VAE_PREFIX)):
            module[key] = value
        elif key.startswith((EMA_PREFIX, TEXT_PREFIX)) or key in SCHEDULE_KEYS:
            continue  # EMA shadows (see --ema), text tower (mapped above), schedule (from the config)
        elif key.startswith(DEPTH_PREFIX) and depth:
            continue  # MiDaS weights: kept aside in build_and_load, loaded strictly by depth.py
        elif key.startswith("first_stage_model.loss.") or key == "model_ema.decay":
            continue  # training-time loss weights
        else:
            unexpected.append(key)
    return module, unexpected


def _cast_in_place(module_weights: dict, device, dtype, mapped_file: MappedFile | None,
                   channels_last_convs: bool = False) -> None:
    """Move and cast tensor by tensor, so at most one extra tensor exists at a time.

    A tensor already on the device in the dtype, in the layout it runs in (a memory-mapped fp32
    file run in fp32 on the CPU), is used as it is: no copy at all. A copied tensor's file pages are
    given back at once.

    With `channels_last_convs` (the model runs on the CPU), convolution weights are laid out
    channels-last while they are copied anyway: oneDNN then runs the UNet's and the VAE's
    convolutions on NHWC activations, 7-10% off a full-size UNet step and about a quarter off
    the VAE decode (docs/benchmarks.md). The maths is the same up to float rounding.
    """
    for key, value in module_weights.items():
        layout = torch.channels_last if channels_last_convs and value.dim() == 4 else torch.preserve_format
        copy = value.to(device=device, dtype=dtype if value.is_floating_point() else None, memory_format=layout)
        if mapped_file is not None and copy.data_ptr() != value.data_ptr():
            mapped_file.release(value)
        module_weights[key] = copy


def _schedule(weights: dict, config: ModelConfig) -> torch.Tensor:
    """The checkpoint's own ᾱ when it has one (the original lets it override), else the config's."""
    from sd_cli.sampling.schedule import alphas_cumprod

    stored = weights.get("alphas_cumprod")
    if stored is not None and stored.shape == (config.timesteps,):
        return stored.detach().to("cpu", torch.float32).clone()
    return alphas_cumprod(config.linear_start, config.linear_end, config.timesteps)


def _settle_parameterization(model: LatentDiffusion, name: str) -> LatentDiffusion:
    context_dim = int(model.config.unet_params["context_dim"])
    v, measured = is_v_prediction(model.unet, context_dim, model.device, model.dtype)
    if v:
        model.config = dataclasses.replace(model.config, parameterization="v", source=str(packaged_config("v2-inference-v.yaml")))
    kind = "v-prediction (768-v)" if v else "eps-prediction (512-base)"
    log.info(f"measured {name} as SD 2.x {kind} (UNet test output {measured:+.3f}; below -1 means v); "
             "pass --config to override")
    return model
