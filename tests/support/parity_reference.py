"""The independent pipeline the parity tests compare sd_cli against, built from the same tiny checkpoint.
Whole-run parity: sd_cli's txt2img/img2img against an independent pipeline on the same tiny weights.

The reference is built only from the checkpoint file and its YAML, never from sd_cli code:
- UNet and VAE: diffusers' UNet2DConditionModel / AutoencoderKL through diffusers' own LDM converter;
- text: transformers' CLIPTextModel (SD 1.x keys are already HF names; SD 2.x open_clip keys are
  renamed here), tokens from transformers' CLIPTokenizer over open_clip's bundled BPE merges;
- samplers: diffusers' DDIM, PNDM (PLMS) and DPM-Solver++ schedulers, configured as below to be
  the original ldm samplers (docs/reference/original-scripts.md §5), plus the original's CFG and img2img noising
  written out in this file.

The schedulers derive ᾱ themselves (a float32 cumprod); the checkpoint's buffer, which the original
and sd_cli use, was computed in float64 and cast. The two differ by < 1e-6, invisible at TOLERANCE.

Scheduler findings (diffusers 0.42):
- DDIM "leading" + steps_offset=1 + set_alpha_to_one=False is the original's grid and coefficients
  whenever 1000 % S == 0, and also for the step counts where the original crashes (S=9, 37, ...):
  there diffusers' grid is exactly the original's without its out-of-range timestep 1000, which
  is what sd_cli runs.
- PNDM with skip_prk_steps=True repeats the second timestep to do the original's pseudo improved
  Euler first step. Its own v_prediction conversion uses the wrong timestep on that repeated call
  (it converts at the *previous* t), so v-PLMS is run here with prediction_type="epsilon" and the
  v→ε conversion done in the loop at the timestep the UNet was called with.
- DPM-Solver++: with timestep_spacing="linspace" and S=9, timesteps are 999, 888, ..., 111 and the
  last sigma ("sigma_min") is ᾱ[0]'s: the original's continuous grid linspace(1, 0.001, 10) exactly.
  lower_order_final gives first order on the last step (S < 15) as the original does.
"""


import numpy as np
import pytest
import torch
from references import hf_clip_tokenizer, smooth_image

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")
from hf_text import hf_text_model, open_clip_to_hf  # noqa: E402
from diffusers.loaders.single_file_utils import (  # noqa: E402
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
    create_unet_diffusers_config_from_ldm,
    create_vae_diffusers_config_from_ldm,
)
from omegaconf import OmegaConf  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from tiny_models import write_tiny_checkpoint  # noqa: E402

from sd_cli.pipelines.img2img import img2img  # noqa: E402
from sd_cli.pipelines.txt2img import txt2img  # noqa: E402
from sd_cli.loading.loader import load_model  # noqa: E402
from sd_cli.sampling.denoising import SamplingParams  # noqa: E402
from sd_cli.sampling.schedule import ddim_timesteps  # noqa: E402

TOLERANCE = 1e-4  # max abs difference of decoded images, float32
SIZE = 64  # pixels; latents are 8x8
PROMPTS = ["a red circle on a blue square", "two green triangles"]
EOT = 49407
# diffusers' DPM-Solver builds sigmas with np.array(tensor): a numpy 2 deprecation, not ours
BETAS = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")


# ---------------------------------------------------------------- the independent reference pipeline


class Reference:
    """The same checkpoint as diffusers + transformers models; the samplers are test functions below."""

    def __init__(self, checkpoint_path, yaml_path):
        weights = load_file(str(checkpoint_path))
        config = OmegaConf.to_container(OmegaConf.load(yaml_path))
        params = config["model"]["params"]
        self.v = params.get("parameterization", "eps") == "v"
        self.scale_factor = params["scale_factor"]
        unet_keys = {k: v for k, v in weights.items() if k.startswith("model.diffusion_model.")}
        unet_config = create_unet_diffusers_config_from_ldm(config, unet_keys)
        self.unet = diffusers.UNet2DConditionModel(**unet_config).eval()
        self.unet.load_state_dict(convert_ldm_unet_checkpoint(unet_keys, unet_config), strict=True)
        vae_keys = {k: v for k, v in weights.items() if k.startswith("first_stage_model.")}
        vae_config = create_vae_diffusers_config_from_ldm(config, vae_keys)
        self.vae = diffusers.AutoencoderKL(**vae_config).eval()
        self.vae.load_state_dict(convert_ldm_vae_checkpoint(vae_keys, vae_config), strict=True)
        self.openclip = "cond_stage_model.model.token_embedding.weight" in weights
        if self.openclip:  # SD 2.x: penultimate hidden state through the final layer norm
            self.text = hf_text_model(open_clip_to_hf(weights, "cond_stage_model.model."), "gelu")
        else:  # SD 1.x: last_hidden_state; the checkpoint already has HF names
            prefix = "cond_stage_model.transformer."
            self.text = hf_text_model({k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)},
                                      "quick_gelu")
        self.tokenizer = hf_clip_tokenizer()
        self.unet_calls = []  # batch size of each UNet call

    @torch.no_grad()
    def encode_text(self, prompts):
        ids = self.tokenizer(prompts, padding="max_length", max_length=77, return_tensors="pt")["input_ids"]
        if self.openclip:  # open_clip.tokenize pads with 0 after the end token
            after_end = torch.cumsum(ids == EOT, dim=1) - (ids == EOT).int() > 0
            ids = ids.masked_fill(after_end, 0)
            out = self.text(input_ids=ids, output_hidden_states=True)
            final_layer_norm = getattr(self.text, "text_model", self.text).final_layer_norm
            return final_layer_norm(out.hidden_states[-2])
        return self.text(input_ids=ids).last_hidden_state

    @torch.no_grad()
    def guided(self, x, t, cond, uncond, scale):
        """Raw guided output (ε or v): one UNet call on [uncond, cond], uncond first; scale 1 skips uncond."""
        t = torch.full((x.shape[0],), int(t), dtype=torch.long)
        if scale == 1.0:
            self.unet_calls.append(x.shape[0])
            return self.unet(x, t, encoder_hidden_states=cond).sample
        self.unet_calls.append(2 * x.shape[0])
        both = self.unet(torch.cat([x, x]), torch.cat([t, t]), encoder_hidden_states=torch.cat([uncond, cond])).sample
        u, c = both.chunk(2)
        return u + scale * (c - u)

    @torch.no_grad()
    def decode(self, latents):
        return self.vae.decode(latents / self.scale_factor).sample

    @torch.no_grad()
    def encode_image(self, image):
        return self.vae.encode(image).latent_dist.mean * self.scale_factor

    def ddim_scheduler(self):
        return diffusers.DDIMScheduler(**BETAS, clip_sample=False, set_alpha_to_one=False, steps_offset=1,
                                       timestep_spacing="leading",
                                       prediction_type="v_prediction" if self.v else "epsilon")


class Generators:
    """sd_cli's convention: image i draws from torch.Generator('cpu').manual_seed(seeds[i]), [1, 4, h, w] a draw."""

    def __init__(self, seeds):
        self.generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]

    def draw(self):
        return torch.cat([torch.randn((1, 4, SIZE // 8, SIZE // 8), generator=g) for g in self.generators])


@torch.no_grad()
def ref_ddim(ref: Reference, x, steps, cond, uncond, scale, eta, noise: Generators, start_index=None):
    sched = ref.ddim_scheduler()
    sched.set_timesteps(steps)
    timesteps = sched.timesteps if start_index is None else sched.timesteps[len(sched.timesteps) - start_index:]
    for t in timesteps:
        out = ref.guided(x, t, cond, uncond, scale)
        variance_noise = noise.draw() if eta > 0 else None
        x = sched.step(out, t, x, eta=eta, variance_noise=variance_noise).prev_sample
    return x


@torch.no_grad()
def ref_plms(ref: Reference, x, steps, cond, uncond, scale):
    sched = diffusers.PNDMScheduler(**BETAS, skip_prk_steps=True, set_alpha_to_one=False, steps_offset=1,
                                    timestep_spacing="leading", prediction_type="epsilon")
    sched.set_timesteps(steps)
    for t in sched.timesteps:  # S + 1 entries: the second timestep is repeated for the first step
        out = ref.guided(x, t, cond, uncond, scale)
        if ref.v:  # ε from v at the timestep the UNet saw
            a = sched.alphas_cumprod[int(t)]
            out = a.sqrt() * out + (1 - a).sqrt() * x
        x = sched.step(out, t, x).prev_sample
    return x


@torch.no_grad()
def ref_dpm(ref: Reference, x, steps, cond, uncond, scale):
    sched = diffusers.DPMSolverMultistepScheduler(
        **BETAS, algorithm_type="dpmsolver++", solver_order=2, lower_order_final=True,
        timestep_spacing="linspace", final_sigmas_type="sigma_min",
        prediction_type="v_prediction" if ref.v else "epsilon")
    sched.set_timesteps(steps)
    for t in sched.timesteps:
        x = sched.step(ref.guided(x, t, cond, uncond, scale), t, x).prev_sample
    return x


def ref_txt2img(ref: Reference, prompts, negatives, seeds, params: SamplingParams):
    cond = ref.encode_text(prompts)
    uncond = ref.encode_text(negatives) if params.scale != 1.0 else None
    noise = Generators(seeds)
    x = noise.draw()
    if params.sampler == "ddim":
        x = ref_ddim(ref, x, params.steps, cond, uncond, params.scale, params.eta, noise)
    elif params.sampler == "plms":
        x = ref_plms(ref, x, params.steps, cond, uncond, params.scale)
    else:
        x = ref_dpm(ref, x, params.steps, cond, uncond, params.scale)
    return ref.decode(x)


def ref_img2img(ref: Reference, image, prompts, negatives, seeds, params: SamplingParams, strength):
    """The original img2img with DDIM: noise to DDIM index t_enc, denoise from index t_enc - 1."""
    cond = ref.encode_text(prompts)
    uncond = ref.encode_text(negatives) if params.scale != 1.0 else None
    x0 = ref.encode_image(image).expand(len(prompts), -1, -1, -1)
    noise = Generators(seeds)
    first = noise.draw()
    sched = ref.ddim_scheduler()
    sched.set_timesteps(params.steps)
    ascending = sched.timesteps.flip(0)
    t_enc = int(strength * params.steps)
    if t_enc >= len(ascending):  # strength 1: pure noise, the full run
        x = ref_ddim(ref, first, params.steps, cond, uncond, params.scale, params.eta, noise)
    else:
        a = sched.alphas_cumprod[ascending[t_enc]]
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * first
        x = ref_ddim(ref, x_t, params.steps, cond, uncond, params.scale, params.eta, noise, start_index=t_enc)
    return ref.decode(x)


# ---------------------------------------------------------------- fixtures and helpers


class Model:
    def __init__(self, folder, family):
        path = write_tiny_checkpoint(family, folder, fmt="safetensors")
        self.ours = load_model(path).model
        self.ref = Reference(path, path.with_suffix(".yaml"))
        assert self.ours.parameterization == ("v" if self.ref.v else "eps") == ("v" if family == "sd2-v" else "eps")
        self.unet_calls = []
        self.ours.model.diffusion_model.register_forward_hook(
            lambda module, args, output: self.unet_calls.append(args[0].shape[0]))

    def txt2img(self, prompts, seeds, params, negatives=None):
        negatives = negatives or [""] * len(prompts)
        self.unet_calls.clear()
        self.ref.unet_calls.clear()
        ours = txt2img(self.ours, prompts, negatives, seeds, params, SIZE, SIZE)
        theirs = ref_txt2img(self.ref, prompts, negatives, seeds, params)
        return ours, theirs

    def img2img(self, image, prompts, seeds, params, strength, negatives=None):
        negatives = negatives or [""] * len(prompts)
        self.unet_calls.clear()
        self.ref.unet_calls.clear()
        ours = img2img(self.ours, image, prompts, negatives, seeds, params, strength)
        theirs = ref_img2img(self.ref, image, prompts, negatives, seeds, params, strength)
        return ours, theirs



def assert_parity(ours, theirs, batch=1):
    assert ours.shape == theirs.shape == (batch, 3, SIZE, SIZE)
    assert torch.isfinite(ours).all()
    for image in ours:
        assert image.std() > 1e-2, "image is (nearly) constant: the comparison would prove little"
    diff = (ours - theirs).abs().max().item()
    print(f"max abs diff {diff:.2e}")
    assert diff < TOLERANCE, f"max abs diff {diff}"
    return diff
