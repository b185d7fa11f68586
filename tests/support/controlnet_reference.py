"""The independent ControlNet reference the parity tests compare sd_cli against, from the same tiny files.

Built only from the files and their YAMLs, never from sd_cli code:
- the base: parity_reference.Reference (diffusers' UNet2DConditionModel and AutoencoderKL through diffusers'
  LDM converters, transformers' CLIP text model, transformers' tokenizer);
- each ControlNet: diffusers' ControlNetModel, its weights through diffusers' convert_controlnet_checkpoint
  (original-format files) or read as they are (diffusers-format files);
- whole runs: diffusers' StableDiffusionControlNetPipeline (MultiControlNetModel for several units), with
  the start latents passed in; and, where diffusers' rules are not the original's, a DDIM loop written
  here: guess mode (lllyasviel/ControlNet's scales strength * 0.825 ** (12 - i), the unconditional branch
  without control; diffusers' guess mode uses logspace(-1, 0) scales) and --control-start/--control-end
  (AUTOMATIC1111's extension steers step i when start <= i / steps <= end; diffusers' control_guidance_end
  keeps step i only when (i + 1) / steps <= end).
"""

import numpy as np
import torch
from parity_reference import Reference
from references import hf_clip_tokenizer
from safetensors.torch import load_file
from tiny_controlnet import CONTROL_PREFIX, diffusers_controlnet_config, tiny_control_config

import diffusers
from diffusers.loaders.single_file_utils import convert_controlnet_checkpoint
from diffusers.models.controlnets.multicontrolnet import MultiControlNetModel

GUESS_DECAY = 0.825


def read_tensors(path) -> dict:
    if str(path).endswith(".safetensors"):
        return load_file(str(path))
    return torch.load(path, map_location="cpu", weights_only=True)


def reference_controlnet(path, base_unet: dict, diffusers_format: bool = False):
    """diffusers' ControlNetModel (float32) from an original-format or diffusers-format file; base_unet: the
    base checkpoint's model.diffusion_model.* tensors, which diffusers' config helper reads sizes from."""
    tensors = read_tensors(path)
    tensors = {k: v.float() for k, v in tensors.get("state_dict", tensors).items()}
    diffusers_config = diffusers_controlnet_config(tiny_control_config(), base_unet)
    if not diffusers_format:
        prefixed = {k: v for k, v in tensors.items() if k.startswith(CONTROL_PREFIX)}
        tensors = convert_controlnet_checkpoint(prefixed or tensors, diffusers_config)  # bare keys: as they are
    net = diffusers.ControlNetModel(**diffusers_config).eval()
    net.load_state_dict(tensors, strict=True)
    return net


class ControlReference:
    def __init__(self, base_path, base_yaml):
        self.base = Reference(base_path, base_yaml)
        self.base_unet = {k: v for k, v in load_file(str(base_path)).items() if k.startswith("model.diffusion_model.")}
        tokenizer = hf_clip_tokenizer()
        tokenizer.model_max_length = 77  # the pipeline pads to it
        self.tokenizer = tokenizer

    def controlnet(self, path, diffusers_format: bool = False):
        return reference_controlnet(path, self.base_unet, diffusers_format)

    def pipeline(self, nets):
        controlnet = nets[0] if len(nets) == 1 else MultiControlNetModel(nets)
        return diffusers.StableDiffusionControlNetPipeline(
            vae=self.base.vae, text_encoder=self.base.text, tokenizer=self.tokenizer, unet=self.base.unet,
            controlnet=controlnet, scheduler=self.base.ddim_scheduler(), safety_checker=None,
            feature_extractor=None, requires_safety_checker=False)

    @torch.no_grad()
    def pipeline_latents(self, nets, hints, prompt, latents, steps, scale, strengths):
        """The pipeline's denoised latents; hints: uint8 HWC arrays at the output size."""
        from PIL import Image

        images = [Image.fromarray(hint) for hint in hints]
        out = self.pipeline(nets)(prompt=prompt, negative_prompt="", image=images if len(nets) > 1 else images[0],
                                  num_inference_steps=steps, guidance_scale=scale, eta=0.0, latents=latents.clone(),
                                  controlnet_conditioning_scale=strengths if len(nets) > 1 else strengths[0],
                                  output_type="latent", height=hints[0].shape[0], width=hints[0].shape[1])
        return out.images

    @torch.no_grad()
    def loop_latents(self, net, hint, prompt, latents, steps, scale, strength, guess_mode=False, start=0.0, end=1.0):
        """DDIM with the original's guess-mode scales and AUTOMATIC1111's start/end rule, written out here."""
        cond, uncond = self.base.encode_text([prompt]), self.base.encode_text([""])
        cond_hint = torch.from_numpy(hint).float().div(255).permute(2, 0, 1)[None]
        sched = self.base.ddim_scheduler()
        sched.set_timesteps(steps)
        x = latents.clone()
        for i, t in enumerate(sched.timesteps):
            steering = start <= i / steps <= end
            tt = torch.full((1,), int(t), dtype=torch.long)
            plain = lambda context: self.base.unet(x, tt, encoder_hidden_states=context).sample  # noqa: E731
            controlled = (lambda context: self._controlled(net, cond_hint, x, tt, context, strength, guess_mode)) \
                if steering else plain
            e_u = plain(uncond) if guess_mode else controlled(uncond)
            e_c = controlled(cond)
            x = sched.step(e_u + scale * (e_c - e_u), t, x, eta=0.0).prev_sample
        return x

    def _controlled(self, net, hint, x, t, context, strength, guess_mode):
        down, mid = net(x, t, encoder_hidden_states=context, controlnet_cond=hint, return_dict=False)
        residuals = [*down, mid]
        if guess_mode:
            scales = [strength * GUESS_DECAY ** float(12 - i) for i in range(13)]
        else:
            scales = [strength] * len(residuals)
        residuals = [r * s for r, s in zip(residuals, scales)]
        return self.base.unet(x, t, encoder_hidden_states=context, down_block_additional_residuals=residuals[:-1],
                              mid_block_additional_residual=residuals[-1]).sample


def canny_hint(rgb: np.ndarray, low=100, high=200) -> np.ndarray:
    """The scripts' cv2.Canny on the 3-channel uint8 image, as 3 equal channels."""
    import cv2

    return np.repeat(cv2.Canny(rgb, low, high)[:, :, None], 3, axis=2)
