"""The request bodies of /sdapi/v1/txt2img and img2img, under AUTOMATIC1111's names and defaults
(its modules/api/models.py builds them from StableDiffusionProcessing's arguments).

Unknown fields are kept (extra="allow"): the app logs and ignores them, as AUTOMATIC1111 does.
Fields AUTOMATIC1111 would act on but sd_cli cannot are declared here with their "off" default, so
that translate.py can refuse a request that turns one on instead of dropping it silently.

Two defaults differ on purpose: width and height default to the model's native size (AUTOMATIC1111:
512, which is SD 1.x's), and hires_fix's denoising_strength to sd_cli's --hires-strength.
"""

from __future__ import annotations

from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field

from sd_cli import fields


class GenerationRequest(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)

    prompt: str = ""
    negative_prompt: str = ""
    seed: int = -1
    sampler_name: Optional[str] = None
    sampler_index: str = "Euler"  # AUTOMATIC1111 uses sampler_name or, when empty, this
    scheduler: Optional[str] = None  # "Automatic": the sampler's own
    steps: int = 50
    cfg_scale: float = 7.0
    width: Optional[int] = None
    height: Optional[int] = None
    batch_size: int = 1
    n_iter: int = 1
    eta: Optional[float] = None
    denoising_strength: Optional[float] = None
    override_settings: dict[str, Any] = Field(default_factory=dict)
    override_settings_restore_afterwards: bool = True
    send_images: bool = True
    save_images: bool = False
    # AUTOMATIC1111 features sd_cli does not have: accepted at these values only.
    restore_faces: Optional[bool] = None
    tiling: Optional[bool] = None
    subseed: int = -1
    subseed_strength: float = 0.0
    seed_resize_from_h: int = -1
    seed_resize_from_w: int = -1
    styles: Optional[list[str]] = None
    script_name: Optional[str] = None
    script_args: list = Field(default_factory=list)
    alwayson_scripts: dict = Field(default_factory=dict)
    s_min_uncond: Optional[float] = None
    s_churn: Optional[float] = None
    s_tmax: Optional[float] = None
    s_tmin: Optional[float] = None
    s_noise: Optional[float] = None
    refiner_checkpoint: Optional[str] = None
    refiner_switch_at: Optional[float] = None
    disable_extra_networks: bool = False  # true: <lora:...> tags left unapplied


class Txt2ImgRequest(GenerationRequest):
    enable_hr: bool = False
    hr_scale: float = 2.0
    hr_upscaler: Optional[str] = None  # None: "Latent"
    hr_second_pass_steps: int = 0
    # Not available in sd_cli's hires fix: accepted at these values only.
    hr_resize_x: int = 0
    hr_resize_y: int = 0
    hr_checkpoint_name: Optional[str] = None
    hr_sampler_name: Optional[str] = None
    hr_scheduler: Optional[str] = None
    hr_prompt: str = ""
    hr_negative_prompt: str = ""
    firstphase_width: int = 0
    firstphase_height: int = 0
    firstpass_image: Optional[str] = None


class Img2ImgRequest(GenerationRequest):
    init_images: Optional[list[str]] = None
    mask: Optional[str] = None
    mask_blur: Optional[float] = None  # None: --mask-blur's default (4, as AUTOMATIC1111)
    inpainting_mask_invert: int = 0
    resize_mode: int = 0
    include_init_images: bool = False
    # sd_cli inpaints the whole picture from the image noised to denoising_strength ("original"):
    inpainting_fill: Optional[int] = None
    inpaint_full_res: Optional[bool] = None
    inpaint_full_res_padding: int = 0
    mask_blur_x: Optional[float] = None
    mask_blur_y: Optional[float] = None
    image_cfg_scale: Optional[float] = None
    initial_noise_multiplier: Optional[float] = None


DEFAULT_HIRES_STRENGTH = fields.default("hires_strength")
