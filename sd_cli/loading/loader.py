"""Checkpoint + config -> a ready LatentDiffusion: choose the config, build on meta, load strictly.

Strict means every tensor the model needs comes from the file and every tensor in the file is
used, except the known harmless extras listed by name (EMA shadows, schedule buffers the config
already defines, unused text-tower parts, and the training-only tensors keys.py sets aside).
Anything else stops the run with the names.
"""

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch

from sd_cli import log
from sd_cli.loading.checkpoint import read_checkpoint
from sd_cli.loading.config import ModelConfig, load_config
from sd_cli.loading.packaged import packaged_config
from sd_cli.loading.strict import compare
from sd_cli.loading.detection import check_config_fits, detect_family, is_v_prediction, refuse_foreign
from sd_cli.loading.keys import model_keys
from sd_cli.errors import CheckpointError, UsageError
from sd_cli.loading.deferred import DeferredWeights
from sd_cli.loading.mapped_pages import MappedFile, copied_out
from sd_cli.models.empty import empty_modules
from sd_cli.models.families import family_of
from sd_cli.models.diffusion_engine import DiffusionEngine
from sd_cli.models.latent_diffusion import SCHEDULE_KEYS, LatentDiffusion, text_encoder_class
from sd_cli.models.sdxl_conditioning import SDXLConditioner

EMA_PREFIX = "model_ema."
UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_PREFIX = "cond_stage_model."
DEPTH_PREFIX = "depth_model.model."  # MiDaS, built on first use by depth.py
LOW_SCALE_PREFIX = "low_scale_model."  # the x4 upscaler's noise-augmentation schedule buffers
CONTROL_PREFIX = "control_model."  # a ControlNet v1.0 full file's ControlNet (loading/controlnet_file.py)
SGM_SIGMAS_KEY = "denoiser.sigmas"  # generative-models: the DiscreteDenoiser's table, computed from the config


@dataclass
class LoadedModel:
    model: LatentDiffusion
    checkpoint_path: Path
    config_source: str
    global_step: int | None

    @property
    def name(self) -> str:
        return self.checkpoint_path.stem


@dataclass
class PreparedCheckpoint:
    """A checkpoint opened and its config chosen, no weight read yet (a memory-mapped file's tensors
    are read when they are copied): what the model is, known before it is built."""

    path: Path
    weights: dict
    config: ModelConfig
    measure_v: bool  # SD 2.x eps vs v is measured once the model is built
    global_step: int | None

    @property
    def family(self):
        return family_of(self.config)


def prepare_checkpoint(checkpoint_path, config_path=None, mode: str | None = None) -> PreparedCheckpoint:
    """Open the file and choose its config. With `mode` (a subcommand), a model that cannot serve it is
    refused here, before any weight is read: the config and the key names decide it."""
    path = Path(checkpoint_path)
    checkpoint = read_checkpoint(path)
    weights = model_keys(checkpoint.state_dict, path.name)
    refuse_foreign(weights, path.name)
    config, measure_v = choose_config(path, config_path, weights)
    if mode is not None:
        family_of(config).check_serves(mode)
    return PreparedCheckpoint(path, weights, config, measure_v, checkpoint.global_step)


def load_model(checkpoint_path, config_path=None, *, device="cpu", dtype=torch.float32, use_ema=False,
               offload: bool = False, mode: str | None = None, defer=None) -> LoadedModel:
    """With `offload`, the weights stay on the CPU and each part runs on `device` in turn (offload.py);
    `mode` as for prepare_checkpoint, `defer` as for load_prepared."""
    return load_prepared(prepare_checkpoint(checkpoint_path, config_path, mode), device=device, dtype=dtype,
                         use_ema=use_ema, offload=offload, defer=defer)


def load_prepared(prepared: PreparedCheckpoint, *, device="cpu", dtype=torch.float32, use_ema=False,
                  offload: bool = False, defer=None) -> LoadedModel:
    """Build the prepared checkpoint's model and load its weights strictly; `prepared` gives up its
    tensors, so that only the model holds them once it is built. `defer(module key)`: the keys left
    in the file (on meta in the model, model.deferred keeps them: loading/deferred.py)."""
    path, weights, config, measure_v = prepared.path, prepared.weights, prepared.config, prepared.measure_v
    prepared.weights = {}
    global_step = prepared.global_step
    home = "cpu" if offload else device
    model = build_and_load(config, weights, path.name, device=home, dtype=dtype, mapped_file=MappedFile(path),
                           channels_last_convs=torch.device(device).type == "cpu", use_ema=use_ema, defer=defer)
    model.eval()
    if offload:
        from sd_cli.runtime.offload import enable_offload

        enable_offload(model, device)
    if measure_v:
        model = _settle_parameterization(model, path.name)
    return LoadedModel(model, path, model.config.source, global_step)


def choose_config(path: Path, config_path, state_dict: dict) -> tuple[ModelConfig, bool]:
    """--config wins; then a YAML with the checkpoint's stem, beside it or among the packaged YAMLs (the built-in
    model's sd-cli-tiny.yaml is found that way); then the fingerprint table. A YAML given either way must be
    for the weights' family."""
    if config_path is not None:
        config = load_config(config_path)
        check_config_fits(state_dict, config, path.name,
                          "drop --config (sd_cli detects the model from its weights) or pass that model's YAML")
        return config, False
    for candidate in (path.with_suffix(".yaml"), path.with_suffix(".yml"), packaged_config(path.stem + ".yaml")):
        if candidate.is_file():
            log.info(f"using config {candidate} (named after the checkpoint)")
            config = load_config(candidate)
            check_config_fits(state_dict, config, path.name,
                              f"the YAML named after the checkpoint is for another model: rename or remove "
                              f"{candidate.name} (sd_cli then detects the model from its weights), or pass the "
                              "right one with --config")
            return config, False
    family = detect_family(state_dict, path.name)
    config_path = packaged_config(family.config_name)
    log.info(f"detected {family.description} from the checkpoint's weights; using {config_path}")
    return load_config(config_path), family.measure_v


def select_weights(state_dict: dict, use_ema: bool, name: str, unet_keys) -> dict:
    """The weights to load: with --ema the UNet's EMA shadows (LitEma's dotless names) stand in for its
    live weights, which a file may also lack altogether (an EMA-only save)."""
    shadows = {key: EMA_PREFIX + key[len("model."):].replace(".", "") for key in unet_keys}
    if not use_ema:
        if not any(key.startswith(UNET_PREFIX) for key in state_dict) and any(s in state_dict for s in shadows.values()):
            raise CheckpointError(f"{name}: holds only the EMA weights of the UNet (model_ema.*, no "
                                  f"{UNET_PREFIX}*); run it with --ema")
        return state_dict
    missing = [shadow for shadow in shadows.values() if shadow not in state_dict]
    if len(missing) == len(shadows):
        raise CheckpointError(f"{name}: --ema asked for EMA weights but the file has none (no model_ema.* UNet "
                              "weights); run without --ema")
    if missing:
        raise CheckpointError(f"{name}: --ema asked for EMA weights but {len(missing)} are missing (e.g. {missing[0]}); "
                              "this file keeps only one set of weights: run without --ema")
    weights = dict(state_dict)
    weights.update({key: state_dict[shadow] for key, shadow in shadows.items()})
    log.info(f"using the EMA weights of {name}")
    return weights


def build_and_load(config: ModelConfig, weights: dict, name: str, device="cpu", dtype=torch.float32,
                   mapped_file: MappedFile | None = None, channels_last_convs: bool = False,
                   use_ema: bool = False, defer=None) -> LatentDiffusion:
    if config.engine == "sgm":  # --backend openvino refuses these models, so nothing is deferred there
        return _build_engine(config, weights, name, device, dtype, mapped_file, channels_last_convs, use_ema)
    encoder_class = text_encoder_class(config.text_encoder)
    with empty_modules():  # no random initialisation: every tensor comes from the file
        text_encoder = encoder_class.from_checkpoint(weights, **config.text_params)
        model = LatentDiffusion(config, text_encoder)
    weights = select_weights(weights, use_ema, name, [key for key in model.state_dict() if key.startswith(UNET_PREFIX)])
    module_weights, unexpected = _module_state_dict(weights, encoder_class, model.family.needs_depth,
                                                    model.noise_augmentation is not None)
    compare(model.state_dict(), module_weights, unexpected).raise_if_any(
        f"{name} does not match config {config.source}", sides="checkpoint vs config",
        hint=". Pass the config this checkpoint was made for with --config")
    deferred = DeferredWeights(defer, device, channels_last_convs, mapped_file) if defer is not None else None
    _cast_in_place(module_weights, device, dtype, mapped_file, channels_last_convs, deferred)
    model.load_state_dict(module_weights, strict=True, assign=True)
    model.deferred = deferred
    _release_pages_not_held(weights, model, mapped_file)
    model.alphas_cumprod = _schedule(weights, config, name)
    if model.noise_augmentation is not None:
        _check_augmentation_schedule(weights.get(LOW_SCALE_PREFIX + "alphas_cumprod"), model.noise_augmentation,
                                     config, name)
    # The depth model's MiDaS weights, kept as they are until depth2img builds it (timm is imported only then).
    if model.family.needs_depth:
        model.depth_weights = {key[len(DEPTH_PREFIX):]: value for key, value in weights.items()
                               if key.startswith(DEPTH_PREFIX)}
    # A ControlNet v1.0 file's own ControlNet, kept as it is until a run asks for it (--control-image).
    model.control_weights = {key: value for key, value in weights.items() if key.startswith(CONTROL_PREFIX)} or None
    return model


def _build_engine(config: ModelConfig, weights: dict, name: str, device, dtype, mapped_file, channels_last_convs,
                  use_ema: bool) -> DiffusionEngine:
    """generative-models' DiffusionEngine (SDXL, refiner, SD-Turbo), as strictly as LatentDiffusion.

    The VAE stays in float32 whatever the run's dtype, as the original's disable_first_stage_autocast."""
    if use_ema:
        raise UsageError(f"{name}: generative-models' released files carry no EMA weights; run without --ema")
    try:
        with empty_modules():
            conditioner = SDXLConditioner.from_config(config.text_params["emb_models"], weights)
            model = DiffusionEngine(config, conditioner)
    except ValueError as err:
        raise UsageError(f"{config.source}: {err}") from None
    text_weights, _ignored, unexpected = conditioner.module_state_dict_from_checkpoint(weights)
    module_weights = {"conditioner." + key: value for key, value in text_weights.items()}
    for key, value in weights.items():
        if key.startswith((UNET_PREFIX, VAE_PREFIX)):
            module_weights[key] = value
        elif not (key.startswith("conditioner.") or key == SGM_SIGMAS_KEY or key in SCHEDULE_KEYS):
            unexpected.append(key)
    compare(model.state_dict(), module_weights, unexpected).raise_if_any(
        f"{name} does not match config {config.source}", sides="checkpoint vs config",
        hint=". Pass the config this checkpoint was made for with --config")
    vae = {key: module_weights.pop(key) for key in list(module_weights) if key.startswith(VAE_PREFIX)}
    _cast_in_place(module_weights, device, dtype, mapped_file, channels_last_convs)
    _cast_in_place(vae, device, torch.float32, mapped_file, channels_last_convs)
    model.load_state_dict({**module_weights, **vae}, strict=True, assign=True)
    _release_pages_not_held(weights, model, mapped_file)
    model.alphas_cumprod = _schedule(weights, config, name)
    _check_sigma_table(weights.get(SGM_SIGMAS_KEY), model.sigma_table, config, name)
    return model


def _release_pages_not_held(weights: dict, model, mapped_file: MappedFile | None) -> None:
    """While the file stays mapped (the model holds views of it or leaves parts in it, deferred.py), pages
    the load made resident stay so: those of tensors read into one of the load's own (the text towers'
    q, k and v are concatenated into one) and the neighbours the kernel maps around every page fault
    (fault-around), parts left in the file among them. Give back the pages of every file tensor the
    model does not hold as it is."""
    if mapped_file is None:
        return
    held = {t.data_ptr() for t in model.state_dict().values() if not t.is_meta}
    for tensor in weights.values():
        if isinstance(tensor, torch.Tensor) and tensor.data_ptr() not in held:
            mapped_file.release(tensor)


def _check_augmentation_schedule(stored, augmentation, config: ModelConfig, name: str) -> None:
    """The file's low_scale_model.alphas_cumprod against the config's noise_schedule_config; the config's is used."""
    if stored is None:
        return
    computed = augmentation.sqrt_alphas_cumprod.double().square()
    if stored.shape != computed.shape or not torch.allclose(stored.double().cpu(), computed, rtol=1e-4):
        log.warn(f"{name}: its low-res noise schedule (low_scale_model.alphas_cumprod) is not the one config "
                 f"{config.source} defines; using the config's")


def _check_sigma_table(stored, computed: torch.Tensor, config: ModelConfig, name: str) -> None:
    """The file's denoiser.sigmas against the config's discretization; a disagreement is said, the config's used."""
    if stored is None:
        return
    if stored.shape != computed.shape or not torch.allclose(stored.float().cpu(), computed, rtol=1e-3):
        log.warn(f"{name}: its denoiser.sigmas are not the ones config {config.source} defines "
                 f"(linear_start {config.linear_start}, linear_end {config.linear_end}); using the config's")


def _module_state_dict(weights: dict, encoder_class, depth: bool, upscaler: bool = False) -> tuple[dict, list[str]]:
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
        elif upscaler and key.startswith(LOW_SCALE_PREFIX) and key[len(LOW_SCALE_PREFIX):] in SCHEDULE_KEYS:
            continue  # the low-res noise schedule: from the config, checked in build_and_load
        elif key.startswith(CONTROL_PREFIX):
            continue  # a ControlNet v1.0 file's ControlNet: kept aside in build_and_load, loaded strictly when used
        else:
            unexpected.append(key)
    return module, unexpected


def _cast_in_place(module_weights: dict, device, dtype, mapped_file: MappedFile | None,
                   channels_last_convs: bool = False, deferred: DeferredWeights | None = None) -> None:
    """Move and cast tensor by tensor, so at most one extra tensor exists at a time.

    A tensor already on the device in the dtype, in the layout it runs in (a memory-mapped fp32
    file run in fp32 on the CPU), is used as it is: no copy at all. A copied tensor's file pages are
    given back at once.

    With `channels_last_convs` (the model runs on the CPU), convolution weights are laid out
    channels-last while they are copied anyway: oneDNN then runs the UNet's and the VAE's
    convolutions on NHWC activations, 7-10% off a full-size UNet step and about a quarter off
    the VAE decode (docs/benchmarks.md). The maths is the same up to float rounding.

    Keys `deferred` wants are not read at all: it keeps the file's tensor, the model a meta one.
    """
    for key, value in module_weights.items():
        if deferred is not None and deferred.wanted(key):
            module_weights[key] = deferred.defer(key, value, dtype)
        else:
            module_weights[key] = copied_out(value, device, dtype, channels_last_convs, mapped_file)


def _schedule(weights: dict, config: ModelConfig, name: str) -> torch.Tensor:
    """ᾱ as the original's register_schedule computes it from the config, checked against the file's copy.

    The original's load_state_dict then copies the file's ᾱ over it, so a copy that agrees within its
    dtype's rounding is used as stored (an fp16 file renders as it does there). A bf16 copy rounds ᾱ
    near t = 0 to 1.0 (σ = 0, which every sampler divides by): then the config's is used.
    """
    from sd_cli.sampling.schedule import alphas_cumprod

    computed = alphas_cumprod(config.linear_start, config.linear_end, config.timesteps)
    stored = weights.get("alphas_cumprod")
    if stored is None:
        return computed
    if stored.shape != computed.shape or not _within_rounding(stored, computed):
        log.warn(f"{name}: its noise schedule (alphas_cumprod) is not the one config {config.source} defines "
                 f"(linear_start {config.linear_start}, linear_end {config.linear_end}, {config.timesteps} "
                 "timesteps); using the config's")
        return computed
    stored = stored.detach().to("cpu", torch.float32).clone()
    return stored if _usable_schedule(stored) else computed


def _within_rounding(stored: torch.Tensor, computed: torch.Tensor) -> bool:
    """Each stored value is the computed one rounded to the stored dtype (one unit in the last place of slack)."""
    if not stored.is_floating_point():
        return False
    exact = computed.double()
    slack = max(torch.finfo(stored.dtype).eps, torch.finfo(computed.dtype).eps)  # a float64 copy: float32's
    return bool(((stored.double() - exact).abs() <= slack * exact.abs()).all())


def _usable_schedule(alphas_cumprod: torch.Tensor) -> bool:
    """Every ᾱ strictly between 0 and 1 and strictly falling: each timestep has its own positive σ."""
    inside = bool(((alphas_cumprod > 0) & (alphas_cumprod < 1)).all())
    return inside and bool((alphas_cumprod[1:] < alphas_cumprod[:-1]).all())


def _settle_parameterization(model: LatentDiffusion, name: str) -> LatentDiffusion:
    """The measurement needs the UNet's weights: a deferred UNet is read for it and left in the file again."""
    context_dim = int(model.config.unet_params["context_dim"])
    unet = model.model.diffusion_model
    if model.deferred is not None:
        model.deferred.materialise(unet, UNET_PREFIX)
    try:
        v, measured = is_v_prediction(model.unet, context_dim, model.device, model.dtype)
    finally:
        if model.deferred is not None:
            model.deferred.free(unet, UNET_PREFIX)
    if v:
        model.config = dataclasses.replace(model.config, parameterization="v", source=str(packaged_config("v2-inference-v.yaml")))
    kind = "v-prediction (768-v)" if v else "eps-prediction (512-base)"
    log.info(f"measured {name} as SD 2.x {kind} (UNet test output {measured:+.3f}; below -1 means v); "
             "pass --config to override")
    return model
