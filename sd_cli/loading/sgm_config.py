"""generative-models' DiffusionEngine YAMLs (SDXL base and refiner, SD-Turbo's sd_2_1.yaml) → ModelConfig.

The same rules as the ldm YAMLs (config.py): every target must be in the one allow-list, and
training-only params are ignored by name. What the engine's sections become:

- denoiser_config: the DiscreteDenoiser's discretization (linear_start, linear_end, num_idx) and
  its scaling (EpsScaling: eps, VScaling: v);
- network_config: the UNet's params, as an ldm unet_config's;
- conditioner_config: the embedders in order, each as (role, input_key, params);
- first_stage_config: the VAE's params.
"""

from sd_cli.errors import UsageError

ENGINE_TARGET = "sgm.models.diffusion.DiffusionEngine"
# Which text conditioning a sequence of text embedders is, and the model's native latent side.
TEXT_SETUPS = {
    ("clip", "openclip-pooled"): ("sdxl", 128),  # SDXL base and SDXL-Turbo (1024 px; Turbo runs 512)
    ("openclip-pooled",): ("sdxl-refiner", 128),
    ("openclip",): ("sgm-openclip", 64),  # SD-Turbo: SD 2.1 in sgm's layout (512 px)
}
_ENGINE_TRAINING_ONLY = {
    "disable_first_stage_autocast", "loss_fn_config", "sampler_config", "optimizer_config", "scheduler_config",
    "network_wrapper", "ckpt_path", "use_ema", "ema_decay_rate", "input_key", "log_keys", "no_cond_log",
    "compile_model", "en_and_decode_n_samples_a_time",
}
_SCALINGS = {"eps": "eps", "v": "v"}


def parse_engine(model: dict, source: str, role_of) -> dict:
    """The ModelConfig fields of a DiffusionEngine section; role_of(section, where, allowed) -> role."""
    params = dict(model.get("params") or {})
    discretization, parameterization = _denoiser(params.pop("denoiser_config", None), source, role_of)
    embedders = _embedders(params.pop("conditioner_config", None), source, role_of)
    text_roles = tuple(role for role, key, _ in embedders if key == "txt")
    setup = TEXT_SETUPS.get(text_roles)
    if setup is None:
        raise UsageError(f"{source}: text embedders {', '.join(text_roles) or 'none'} are not SDXL's, its refiner's "
                         "or SD-Turbo's; sd_cli runs those generative-models configs")
    text_encoder, image_size = setup
    fields = dict(
        kind="txt2img",
        engine="sgm",
        parameterization=parameterization,
        linear_start=float(discretization.get("linear_start", 0.00085)),
        linear_end=float(discretization.get("linear_end", 0.0120)),
        timesteps=int(discretization.get("num_timesteps", 1000)),
        scale_factor=float(params.pop("scale_factor", 1.0)),
        use_ema=False,
        unet_params=_component(params.pop("network_config", None), source, "network_config", ("unet",), role_of),
        vae_params=_vae(params.pop("first_stage_config", None), source, role_of),
        text_encoder=text_encoder,
        image_size=image_size,
        text_params={"embedders": embedders},
    )
    unknown = sorted(set(params) - _ENGINE_TRAINING_ONLY)
    if unknown:
        raise UsageError(f"{source}: unsupported model params {', '.join(unknown)}; is this a generative-models "
                         "inference config?")
    return fields


def _denoiser(section, source: str, role_of) -> tuple[dict, str]:
    denoiser = _component(section, source, "denoiser_config", ("discrete-denoiser",), role_of)
    if int(denoiser.get("num_idx", 1000)) != 1000:
        raise UsageError(f"{source}: denoiser_config num_idx {denoiser['num_idx']} is not 1000")
    scaling = _section_role(denoiser.get("scaling_config"), source, "denoiser scaling_config", tuple(_SCALINGS), role_of)
    discretization = _component(denoiser.get("discretization_config"), source, "denoiser discretization_config",
                                ("legacy-ddpm",), role_of)
    return discretization, _SCALINGS[scaling]


def _embedders(section, source: str, role_of) -> list[tuple[str, str, dict]]:
    conditioner = _component(section, source, "conditioner_config", ("conditioner",), role_of)
    found = []
    for i, embedder in enumerate(conditioner.get("emb_models") or []):
        where = f"conditioner embedder {i}"
        role = _section_role(embedder, source, where, ("clip", "openclip", "openclip-pooled", "size-embedding"), role_of)
        found.append((role, str(embedder.get("input_key", "")), dict(embedder.get("params") or {})))
    if not found:
        raise UsageError(f"{source}: conditioner_config has no emb_models")
    return found


def _vae(section, source: str, role_of) -> dict:
    vae = _component(section, source, "first_stage_config", ("vae",), role_of)
    vae.pop("lossconfig", None)
    vae.pop("monitor", None)
    ddconfig = dict(vae.get("ddconfig") or {})
    if ddconfig.pop("attn_type", "vanilla") not in ("vanilla", "vanilla-xformers"):
        raise UsageError(f"{source}: first_stage_config attn_type is not vanilla attention")
    return {**vae, "ddconfig": ddconfig}


def _section_role(section, source: str, where: str, allowed: tuple[str, ...], role_of) -> str:
    if not isinstance(section, dict):
        raise UsageError(f"{source}: model params lack {where}")
    return role_of(section, source, where, allowed)


def _component(section, source: str, where: str, allowed: tuple[str, ...], role_of) -> dict:
    _section_role(section, source, where, allowed, role_of)
    return dict(section.get("params") or {})
