"""generative-models' DiffusionEngine models: SDXL (and SDXL-Turbo, the same layout), the SDXL
refiner, and SD-Turbo (SD 2.1 in sgm's layout). They sample as generative-models does
(sampling/sgm.py) and are conditioned as it does, so their family says engine="sgm"."""

from sd_cli.models.families.family import ModelFamily

# ModelConfig.text_encoder (loading/sgm_config.py) -> (name, description, native side)
_SETUPS = {
    "sdxl": ("sdxl", "SDXL", 1024),
    "sdxl-refiner": ("sdxl-refiner", "SDXL refiner", 1024),
    "sgm-openclip": ("sd-turbo", "SD 2.1 (generative-models layout, e.g. SD-Turbo)", 512),
}
# The demo's defaults (scripts/demo/streamlit_helpers.py): VanillaCFG's cfg-scale 5.0, EulerEDMSampler
# (s_churn 0: Euler) over the legacy DDPM discretization.
DEMO_SCALE = 5.0
DEMO_SAMPLER = "euler"
SDXL_WATERMARK = "0xB3EC907BB19E"  # sgm.inference.helpers' 48-bit message, embedded in the float image


def decide(config) -> ModelFamily | None:
    setup = _SETUPS.get(config.text_encoder) if config.engine == "sgm" else None
    if setup is None:
        return None
    name, description, native_size = setup
    size_inputs = tuple(str(entry.get("input_key")) for entry in config.text_params["emb_models"]
                        if str(entry.get("target", "")).endswith(".ConcatTimestepEmbedderND"))
    return ModelFamily(
        name=name,
        description=description,
        subcommands=("txt2img", "img2img"),
        unet_in_channels=config.unet_in_channels,
        inpaint_method=None,
        needs_depth=False,
        native_size=native_size,
        watermark_text=SDXL_WATERMARK,
        zero_empty_negative=name == "sdxl",  # the demo's force_uc_zero_embeddings; refiner and SD-Turbo encode
        engine="sgm",
        aesthetic_conditioned=any(entry.get("input_key") == "aesthetic_score"
                                  for entry in config.text_params.get("emb_models", ())),
        default_scale=DEMO_SCALE,
        default_sampler=DEMO_SAMPLER,
        size_inputs=size_inputs,
    )
