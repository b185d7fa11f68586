"""The x4 upscaler's independent reference: diffusers' StableDiffusionUpscalePipeline built from a tiny
original-format x4 file (tiny_models.py, family "sd2-x4").

- UNet and VAE: diffusers' UNet2DConditionModel / AutoencoderKL through diffusers' own LDM converter,
  which reads num_classes as num_class_embeds (label_emb -> class_embedding) and
  disable_self_attentions as only_cross_attention per level;
- text: transformers' CLIPTextModel with the open_clip tower minus its last block, so that its
  last_hidden_state (through the final layer norm) is the SD 2 "penultimate" rule; the pipeline is
  given these embeddings (open_clip pads with 0 after the end token, the pipeline's tokenizer would not);
- low_res_scheduler: DDPMScheduler on x4-upscaling.yaml's noise_schedule_config ("scaled_linear" is
  ldm's "linear": linear in sqrt β); scheduler: DDIM configured as the original (parity_reference.py).

Where diffusers departs from the original, the test follows the original: diffusers computes the
augmentation's ᾱ as a float32 cumprod (the original: float64, stored float32; < 1e-6 apart), and it
rounds its output to uint8 where the original truncates, so images are compared as floats.
"""

import warnings

import diffusers
import torch
from diffusers.loaders.single_file_utils import (
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
    create_unet_diffusers_config_from_ldm,
    create_vae_diffusers_config_from_ldm,
)
from omegaconf import OmegaConf
from safetensors.torch import load_file

from hf_text import hf_text_model, open_clip_to_hf
from references import hf_clip_tokenizer

EOT = 49407
TEXT_PREFIX = "cond_stage_model.model."


class UpscaleReference:
    def __init__(self, checkpoint_path, yaml_path):
        weights = load_file(str(checkpoint_path))
        config = OmegaConf.to_container(OmegaConf.load(yaml_path))
        params = config["model"]["params"]
        unet_keys = {k: v for k, v in weights.items() if k.startswith("model.diffusion_model.")}
        unet_config = create_unet_diffusers_config_from_ldm(config, unet_keys)
        assert unet_config["num_class_embeds"] == 1000 and unet_config["only_cross_attention"] == [True, False]
        unet = diffusers.UNet2DConditionModel(**unet_config).eval()
        unet.load_state_dict(convert_ldm_unet_checkpoint(unet_keys, unet_config), strict=True)
        vae_keys = {k: v for k, v in weights.items() if k.startswith("first_stage_model.")}
        vae_config = create_vae_diffusers_config_from_ldm(config, vae_keys)
        assert vae_config["scaling_factor"] == params["scale_factor"] == 0.08333
        vae = diffusers.AutoencoderKL(**vae_config).eval()
        vae.load_state_dict(convert_ldm_vae_checkpoint(vae_keys, vae_config), strict=True)
        self.text = hf_text_model(_without_last_block(open_clip_to_hf(weights, TEXT_PREFIX)), "gelu")
        self.tokenizer = hf_clip_tokenizer()
        low_res = params["low_scale_config"]["params"]
        schedule = low_res["noise_schedule_config"]
        low_res_scheduler = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_start=schedule["linear_start"],
                                                    beta_end=schedule["linear_end"], beta_schedule="scaled_linear")
        scheduler = diffusers.DDIMScheduler(
            num_train_timesteps=1000, beta_start=params["linear_start"], beta_end=params["linear_end"],
            beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False, steps_offset=1,
            timestep_spacing="leading", prediction_type="v_prediction")
        self.pipeline = diffusers.StableDiffusionUpscalePipeline(
            vae=vae, text_encoder=self.text, tokenizer=self.tokenizer, unet=unet, low_res_scheduler=low_res_scheduler,
            scheduler=scheduler, safety_checker=None, feature_extractor=None, watermarker=None,
            max_noise_level=low_res["max_noise_level"])
        self.pipeline.set_progress_bar_config(disable=True)

    @torch.no_grad()
    def encode_text(self, prompts):
        ids = self.tokenizer(prompts, padding="max_length", max_length=77, return_tensors="pt")["input_ids"]
        after_end = torch.cumsum(ids == EOT, dim=1) - (ids == EOT).int() > 0
        return self.text(input_ids=ids.masked_fill(after_end, 0)).last_hidden_state

    @torch.no_grad()
    def upscale(self, low_res, prompt, negative, seed, steps, scale, noise_level):
        """One image, [1, 3, 4h, 4w] in [0, 1]: x_T is the seed's first draw, the augmentation noise its second."""
        generator = torch.Generator("cpu").manual_seed(seed)
        h, w = low_res.shape[-2:]
        latents = torch.randn((1, 4, h, w), generator=generator)
        # the pipeline draws its augmentation noise (its first draw) from the generator: here the second
        with warnings.catch_warnings():
            # the original's x / 127.5 - 1, passed as it is: diffusers takes a tensor below 0 as [-1, 1] (and
            # warns that it may stop doing so); a [0, 1] tensor would go through its own 2x - 1 instead
            warnings.filterwarnings("ignore", "Passing `image` as torch tensor with value range in", FutureWarning)
            return self.pipeline(image=low_res, prompt_embeds=self.encode_text([prompt]),
                                 negative_prompt_embeds=self.encode_text([negative]), num_inference_steps=steps,
                                 guidance_scale=scale, noise_level=noise_level, generator=generator, latents=latents,
                                 output_type="pt").images


def _without_last_block(hf_weights: dict) -> dict:
    """The HF text weights without their last encoder layer (SD 2 conditions on the penultimate one)."""
    layers = {int(k.split(".")[3]) for k in hf_weights if k.startswith("text_model.encoder.layers.")}
    last = f"text_model.encoder.layers.{max(layers)}."
    return {k: v for k, v in hf_weights.items() if not k.startswith(last)}
