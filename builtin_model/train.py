"""Train sd_cli's tiny model from a seed and write it as an original SD 1.x checkpoint.

    python -m builtin_model.train --seed 0      # the shipped model: 62 min on 2 CPU cores
    python -m builtin_model.evaluate            # then score it (docs/builtin-model.md has the table)
    python -m builtin_model.train --seed 0 --device cuda --vae-batch 32 --vae-steps 2000 \
        --batch 256 --steps 1800 --latent-scenes 20000 --noise-offset 0   # the earlier H100 model

Recipe (the defaults; every number is a flag):

- Data: procedural scenes from `builtin_model.shapes` (one or two flat shapes on a flat background),
  128 px, drawn on the fly from a numpy generator seeded with --seed. Captions name the colour
  and shape, and at random the size, position and background, in several phrasings.
- Model: the architecture in sd_cli/data/configs/sd-cli-tiny.yaml (one source of truth for the UNet and VAE
  sizes), built with sd_cli's own classes; the text encoder is a CLIP text tower of width
  `context_dim` (64: one head), 3 layers, on the CLIP tokenizer's 49408-token vocabulary.
- (a) VAE: AutoencoderKL (f=8, 4 latent channels, double_z) on whole 128 px scenes, batch 8,
  3000 steps; loss L1 + MSE on a posterior sample + 1e-5 x KL (mean per element); no GAN, no
  LPIPS. AdamW lr 2e-3, 100 warm-up steps, cosine decay to 10%. Then fresh scenes are encoded,
  decoded and scored with the shape detectors, which must see what was rendered.
  (Training on 64 px crops is 4x cheaper but left large flat areas off-colour at 128 px: the
  GroupNorm statistics differ between crops and whole images.)
- (b) scale_factor = 1 / std of posterior samples of 512 fresh scenes, as the original's
  `scale_by_std`; written into the YAML.
- (c) UNet + text encoder, trained together from scratch on the eps objective with SD's
  schedule (betas = linspace(sqrt(0.00085), sqrt(0.012), 1000, float64)**2, t uniform), batch
  64, 2400 steps. Latents of 10000 scenes are encoded once (mean, std) and re-sampled every
  step; captions are drawn afresh every step and replaced by "" 10% of the time so that
  classifier-free guidance works. Output convs start at zero, as in the original UNet.
  AdamW lr 1e-3, weight decay 0.01, 200 warm-up steps, cosine decay to 10%, EMA 0.999 (with
  the usual (1+n)/(10+n) warm-up); the EMA weights are the ones saved. Offset noise: for
  t >= 800 a random per-image, per-channel constant of std 0.25 is added to the training noise
  (see `training_noise` for why; sampling is unchanged).
- Save: float16 safetensors (17.7 MiB) under the original keys (`model.diffusion_model.`,
  `first_stage_model.`, `cond_stage_model.transformer.text_model.`) plus the schedule buffers
  `betas`, `alphas_cumprod`, `alphas_cumprod_prev` (float32, [1000]) at the root; the flags
  are recorded in the file's metadata under "recipe".

Time: 62.3 min on this project's idle 2-core CPU (VAE 24.8, latents 2.1, UNet 35.4; the log is
docs/tiny-model-cpu-shipped-run.log; an earlier run of the same cost took 59.3 min, so expect a
few minutes either way). Small batches are the efficient ones on 2 cores: a VAE step costs 56 ms
per image at batch 8 but 135 ms at batch 32, a UNet step about 15 ms per sample at any batch.
The H100 command above (4.1 min on one H100, bound by per-step overhead) made the model shipped
before this one; on 2 CPU cores it takes 3 to 4.5 hours.

How the offset came about (each row scored with evaluate.py; docs/builtin-model.md has the table):
without it the CPU model never learned the background colour from the caption (11.1%); with it
at every timestep it did (100%) but shape class fell to 57% at this budget; at t >= 800 only,
the shipped recipe, background 98.9%, shape colour 92.7%, class 96.4%.

Determinism: on the CPU the same seed and thread count give the same weights (three one-hour runs
logged identical VAE losses). On CUDA the attention backward kernels accumulate in a
nondeterministic order, so runs agree only to rounding (--deterministic asks torch for
deterministic kernels where it has them). --max-minutes stops stage (c) early, which changes the
result, and --vae-from skips stage (a) with the VAE of an earlier checkpoint; both exist for
quick experiments.
"""

import argparse
import json
import math
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from builtin_model import shapes  # noqa: E402
from sd_cli.loading.config import ModelConfig, load_config  # noqa: E402
from sd_cli.models.text_encoder import CLIPTextEncoder  # noqa: E402
from sd_cli.models.unet import ResBlock, UNetModel  # noqa: E402
from sd_cli.models.attention import SpatialTransformer  # noqa: E402
from sd_cli.models.vae import AutoencoderKL  # noqa: E402

CLIP_VOCAB_SIZE = 49408
CLIP_CONTEXT_LENGTH = 77
TEXT_LAYERS = 3
IMAGE_SIZE = 128


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--config", type=Path, default=ROOT / "sd_cli" / "data" / "configs" / "sd-cli-tiny.yaml",
                   help="model YAML: sizes are read from it, scale_factor is written into it")
    p.add_argument("--out", type=Path, default=ROOT / "sd_cli" / "data" / "sd-cli-tiny.safetensors")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast on CUDA")
    p.add_argument("--deterministic", action="store_true", help="ask torch for deterministic CUDA kernels")
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--max-minutes", type=float, default=None, help="stop stage (c) early after this wall time")
    g = p.add_argument_group("(a) VAE")
    g.add_argument("--vae-steps", type=int, default=3000)
    g.add_argument("--vae-batch", type=int, default=8)
    g.add_argument("--vae-crop", type=int, default=128, help="train on random crops of this side (128: whole scenes)")
    g.add_argument("--vae-lr", type=float, default=2e-3)
    g.add_argument("--kl-weight", type=float, default=1e-5)
    g.add_argument("--vae-from", type=Path, default=None,
                   help="skip (a): take the VAE from this sd_cli checkpoint (for experiments on stage (c))")
    g = p.add_argument_group("(c) UNet and text encoder")
    g.add_argument("--steps", type=int, default=2400)
    g.add_argument("--batch", type=int, default=64)
    g.add_argument("--lr", type=float, default=1e-3)
    g.add_argument("--latent-scenes", type=int, default=10000, help="scenes encoded once for stage (c)")
    g.add_argument("--uncond-prob", type=float, default=0.1)
    g.add_argument("--ema", type=float, default=0.999)
    g.add_argument("--noise-offset", type=float, default=0.25,
                   help="std of a per-image, per-channel constant added to the training noise")
    g.add_argument("--noise-offset-from", type=int, default=800,
                   help="add the offset only where t >= this timestep (0: at every timestep)")
    return p.parse_args(argv)


@dataclass
class Clock:
    start: float
    max_minutes: float | None

    def elapsed(self) -> float:
        return time.time() - self.start

    def out_of_time(self) -> bool:
        return self.max_minutes is not None and self.elapsed() > 60 * self.max_minutes


def log(clock: Clock, message: str) -> None:
    print(f"[{clock.elapsed() / 60:6.1f} min] {message}", flush=True)


def lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(total - warmup, 1)
    return peak * (0.1 + 0.45 * (1 + math.cos(math.pi * progress)))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


# ---------------------------------------------------------------------------------------------
# Data


def render_scenes(rng: np.random.Generator, n: int) -> tuple[list[shapes.Scene], np.ndarray]:
    """n fresh scenes and their images, uint8 [n, 128, 128, 3]."""
    scenes = [shapes.sample_scene(rng) for _ in range(n)]
    return scenes, np.stack([shapes.render(s, IMAGE_SIZE) for s in scenes])


def to_tensor(images: np.ndarray, device) -> torch.Tensor:
    """uint8 [B, H, W, 3] -> float [B, 3, H, W] in [-1, 1]."""
    x = torch.from_numpy(images).to(device).permute(0, 3, 1, 2).float()
    return x / 127.5 - 1.0


def random_crops(rng: np.random.Generator, images: np.ndarray, side: int) -> np.ndarray:
    if side >= images.shape[1]:
        return images
    corners = rng.integers(0, images.shape[1] - side + 1, size=(len(images), 2))
    return np.stack([im[y : y + side, x : x + side] for im, (y, x) in zip(images, corners)])


class Captions:
    """Captions drawn afresh per step, tokenized once per distinct string."""

    def __init__(self, text_encoder: CLIPTextEncoder, rng: np.random.Generator, uncond_prob: float):
        self.text_encoder, self.rng, self.uncond_prob = text_encoder, rng, uncond_prob
        self.cache: dict[str, torch.Tensor] = {}

    def tokens(self, scenes: list[shapes.Scene]) -> torch.Tensor:
        """[B, 77] token ids on the CPU."""
        texts = ["" if self.rng.random() < self.uncond_prob else shapes.caption(s, self.rng) for s in scenes]
        missing = [t for t in dict.fromkeys(texts) if t not in self.cache]
        if missing:
            self.cache.update(zip(missing, self.text_encoder.tokenize(missing)))
        return torch.stack([self.cache[t] for t in texts])


# ---------------------------------------------------------------------------------------------
# Models


def build_models(config: ModelConfig, device) -> tuple[AutoencoderKL, UNetModel, CLIPTextEncoder]:
    vae = AutoencoderKL(**config.vae_params)
    unet = UNetModel(**config.unet_params)
    width = int(config.unet_params["context_dim"])
    text = CLIPTextEncoder(vocab_size=CLIP_VOCAB_SIZE, context_length=CLIP_CONTEXT_LENGTH, width=width,
                           layers=TEXT_LAYERS, mlp_width=4 * width)
    init_fresh(unet, text)
    return vae.to(device), unet.to(device), text.to(device)


@torch.no_grad()
def init_fresh(unet: UNetModel, text: CLIPTextEncoder) -> None:
    """What sd_cli's classes leave to the checkpoint: the original's zero-initialised output
    convs (each residual branch starts as identity) and CLIP's embedding init."""
    for module in unet.modules():
        if isinstance(module, ResBlock):
            torch.nn.init.zeros_(module.out_layers[3].weight)
            torch.nn.init.zeros_(module.out_layers[3].bias)
        elif isinstance(module, SpatialTransformer):
            torch.nn.init.zeros_(module.proj_out.weight)
            torch.nn.init.zeros_(module.proj_out.bias)
    torch.nn.init.zeros_(unet.out[2].weight)
    torch.nn.init.zeros_(unet.out[2].bias)
    torch.nn.init.normal_(text.token_embedding.weight, std=0.02)
    torch.nn.init.normal_(text.positional_embedding, std=0.01)


def sample_posterior(mean: torch.Tensor, logvar_or_std: torch.Tensor, generator, is_std=False) -> torch.Tensor:
    std = logvar_or_std if is_std else torch.exp(0.5 * logvar_or_std)
    noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
    return mean + std * noise


def autocast(args, device):
    enabled = args.bf16 and device.type == "cuda"
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


# ---------------------------------------------------------------------------------------------
# (a) VAE


def train_vae(vae: AutoencoderKL, args, rng, generator, clock: Clock) -> None:
    device = next(vae.parameters()).device
    optimizer = torch.optim.AdamW(vae.parameters(), lr=args.vae_lr, betas=(0.9, 0.99), weight_decay=0.0)
    running = torch.zeros(2, device=device)  # (reconstruction, KL) summed on the device
    for step in range(args.vae_steps):
        set_lr(optimizer, lr_at(step, args.vae_steps, args.vae_lr, warmup=100))
        _, images = render_scenes(rng, args.vae_batch)
        x = to_tensor(random_crops(rng, images, args.vae_crop), device)  # [B, 3, c, c] in [-1, 1]
        with autocast(args, device):
            mean, logvar = vae.encode_moments(x)  # [B, 4, c/8, c/8] each
            reconstruction = vae.decode(sample_posterior(mean, logvar, generator)).float()
        kl = 0.5 * (mean.float() ** 2 + logvar.float().exp() - 1.0 - logvar.float())
        rec = F.l1_loss(reconstruction, x) + F.mse_loss(reconstruction, x)
        loss = rec + args.kl_weight * kl.mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        running += torch.stack([rec.detach(), kl.detach().mean()])
        if (step + 1) % args.log_every == 0 or step + 1 == args.vae_steps:
            rec_mean, kl_mean = (running / ((step % args.log_every) + 1)).tolist()
            log(clock, f"vae {step + 1}/{args.vae_steps} rec {rec_mean:.4f} kl {kl_mean:.1f}")
            running.zero_()


def load_vae(vae: AutoencoderKL, checkpoint: Path) -> None:
    """The first_stage_model.* weights of an sd_cli or original checkpoint (.ckpt or .safetensors)."""
    from sd_cli.loading.checkpoint import read_checkpoint
    from sd_cli.loading.vae_file import original_vae_keys

    state = read_checkpoint(checkpoint).state_dict
    weights = original_vae_keys({k: v for k, v in state.items() if k.startswith("first_stage_model.")})
    vae.load_state_dict(weights, strict=True)  # copied into the fp32 parameters, cast on the way


@torch.no_grad()
def check_vae(vae: AutoencoderKL, rng, clock: Clock, n: int = 128) -> dict:
    """Decode fresh whole scenes through the posterior mean; the detectors must see the scene."""
    device = next(vae.parameters()).device
    scenes, images = render_scenes(rng, n)
    decoded = []
    for i in range(0, n, 32):
        mean, _ = vae.encode_moments(to_tensor(images[i : i + 32], device))
        decoded.append(vae.decode(mean).float())
    x = torch.cat(decoded).clamp(-1, 1)
    psnr = 10 * torch.log10(4 / ((x - to_tensor(images, device)) ** 2).mean()).item()
    out = ((x + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()
    found = [shapes.detect(im) for im in out]
    report = {
        "psnr": psnr,
        "background": np.mean([d.background == s.background for s, d in zip(scenes, found)]),
        "shape_colour": np.mean([d.shape_colour == s.colour for s, d in zip(scenes, found)]),
        "shape_class": np.mean([d.shape_class == s.shape for s, d in zip(scenes, found)]),
        "count": np.mean([d.count == s.count for s, d in zip(scenes, found)]),
    }
    log(clock, "vae check on decoded scenes: " + ", ".join(f"{k} {v:.3f}" for k, v in report.items()))
    return report


# ---------------------------------------------------------------------------------------------
# (b) scale_factor and the latent set


@torch.no_grad()
def encode_scenes(vae: AutoencoderKL, rng, n: int, batch: int = 64):
    """Scenes and their posterior (mean, std), each [n, 4, 16, 16] float32."""
    device = next(vae.parameters()).device
    scenes, means, stds = [], [], []
    for i in range(0, n, batch):
        chunk, images = render_scenes(rng, min(batch, n - i))
        mean, logvar = vae.encode_moments(to_tensor(images, device))
        scenes += chunk
        means.append(mean.float())
        stds.append(torch.exp(0.5 * logvar.float()))
    return scenes, torch.cat(means), torch.cat(stds)


@torch.no_grad()
def measure_scale_factor(vae: AutoencoderKL, rng, generator, n: int = 512) -> float:
    """1 / std of posterior samples, as the original's `scale_by_std`."""
    _, mean, std = encode_scenes(vae, rng, n)
    z = sample_posterior(mean, std, generator, is_std=True)
    return float(1.0 / z.flatten().std())


def write_scale_factor(config_path: Path, scale_factor: float) -> None:
    """Rewrite the `scale_factor:` line of the YAML, keeping its comment and everything else."""
    text = config_path.read_text()
    new, count = re.subn(r"(^\s*scale_factor:\s*)[-+0-9.eE]+", rf"\g<1>{scale_factor:.5f}", text, flags=re.M)
    if count != 1:
        raise SystemExit(f"{config_path}: expected one scale_factor line, found {count}")
    config_path.write_text(new)


# ---------------------------------------------------------------------------------------------
# (c) UNet and text encoder


def sd_schedule(config: ModelConfig) -> dict[str, torch.Tensor]:
    """The original's schedule buffers: float64 maths, stored float32."""
    betas = np.linspace(config.linear_start**0.5, config.linear_end**0.5, config.timesteps, dtype=np.float64) ** 2
    alphas_cumprod = np.cumprod(1.0 - betas)
    alphas_cumprod_prev = np.append(1.0, alphas_cumprod[:-1])
    return {name: torch.tensor(values, dtype=torch.float32)
            for name, values in [("betas", betas), ("alphas_cumprod", alphas_cumprod),
                                 ("alphas_cumprod_prev", alphas_cumprod_prev)]}


class Ema:
    """Exponential moving average of parameters, with the (1+n)/(10+n) warm-up."""

    def __init__(self, params: list[torch.Tensor], decay: float):
        self.params, self.decay, self.updates = params, decay, 0
        self.shadow = [p.detach().clone() for p in params]

    @torch.no_grad()
    def update(self) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        torch._foreach_lerp_(self.shadow, [p.detach() for p in self.params], 1.0 - decay)

    @torch.no_grad()
    def copy_to_params(self) -> None:
        for p, s in zip(self.params, self.shadow):
            p.copy_(s)


def training_noise(shape, offset: float, generator, offset_rows: torch.Tensor | None = None) -> torch.Tensor:
    """Gaussian noise plus, per image and channel, a constant of std `offset` ("offset noise"),
    for the images where `offset_rows` (bool, [B]) is true, or for all when it is None.

    Why: SD's schedule never reaches pure noise (sqrt(alphas_cumprod[999]) = 0.068), so at the
    highest t the mean of x_t still shows the latent's mean, which for these scenes is the
    background colour. A model trained on plain noise learns to keep that mean instead of reading
    the background from the caption, and at sampling time the mean of the initial noise picks the
    background at random. A random constant in the noise hides the leaked mean; sampling is
    unchanged (plain Gaussian noise is the zero-offset case of what the model was trained on).
    The leak only matters where the background is still undecided, the highest timesteps; below
    them the offset is a burden (the model must tell it apart from the image's own mean), hence
    `offset_rows`.
    """
    noise = torch.randn(shape, generator=generator, device=generator.device)
    if offset:
        batch, channels = shape[:2]
        constants = offset * torch.randn((batch, channels, 1, 1), generator=generator, device=generator.device)
        if offset_rows is not None:
            constants *= offset_rows.view(-1, 1, 1, 1)
        noise += constants
    return noise


def train_diffusion(unet, text, latents, scenes, scale_factor, config, args, rng, generator, clock) -> None:
    device = next(unet.parameters()).device
    mean, std = latents
    alphas_cumprod = sd_schedule(config)["alphas_cumprod"].to(device)
    params = list(unet.parameters()) + list(text.parameters())
    optimizer = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.999), weight_decay=0.01)
    ema = Ema(params, args.ema)
    captions = Captions(text, rng, args.uncond_prob)
    running = torch.zeros((), device=device)  # summed on the device: no sync per step
    for step in range(args.steps):
        set_lr(optimizer, lr_at(step, args.steps, args.lr, warmup=200))
        index = rng.integers(0, len(scenes), size=args.batch)
        tokens = captions.tokens([scenes[i] for i in index]).to(device)  # [B, 77]
        rows = torch.from_numpy(index).to(device)
        x0 = sample_posterior(mean[rows], std[rows], generator, is_std=True) * scale_factor  # [B, 4, 16, 16]
        t = torch.randint(0, config.timesteps, (args.batch,), generator=generator, device=device)
        eps = training_noise(x0.shape, args.noise_offset, generator, offset_rows=t >= args.noise_offset_from)
        a_t = alphas_cumprod[t].view(-1, 1, 1, 1)
        x_t = a_t.sqrt() * x0 + (1 - a_t).sqrt() * eps
        with autocast(args, device):
            prediction = unet(x_t, t, text.encode(tokens))
        loss = F.mse_loss(prediction.float(), eps)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        ema.update()
        running += loss.detach()
        if (step + 1) % args.log_every == 0 or step + 1 == args.steps:
            done = (step % args.log_every) + 1
            log(clock, f"unet {step + 1}/{args.steps} eps-mse {running.item() / done:.4f}")
            running.zero_()
        if clock.out_of_time():
            log(clock, f"--max-minutes reached: stopping stage (c) after {step + 1} steps")
            break
    ema.copy_to_params()


# ---------------------------------------------------------------------------------------------
# Saving


def checkpoint_state_dict(unet, vae, text, config: ModelConfig) -> dict[str, torch.Tensor]:
    """Original SD 1.x keys; floating-point weights in float16, schedule buffers in float32."""
    weights = {f"model.diffusion_model.{k}": v for k, v in unet.state_dict().items()}
    weights.update({f"first_stage_model.{k}": v for k, v in vae.state_dict().items()})
    weights.update(text.checkpoint_state_dict())
    weights = {k: (v.half() if v.is_floating_point() else v) for k, v in weights.items()}
    weights.update(sd_schedule(config))
    return {k: v.detach().cpu().contiguous() for k, v in weights.items()}


def recipe_json(args: argparse.Namespace) -> str:
    """The flags that decide the weights, as recorded in the file (not where files go, nor the
    thread count or logging)."""
    recipe = {k: v for k, v in vars(args).items() if k not in ("config", "out", "threads", "log_every")}
    return json.dumps(recipe, default=str)


def save(weights: dict, path: Path, metadata: dict) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(weights, str(path), metadata={k: str(v) for k, v in metadata.items()})


# ---------------------------------------------------------------------------------------------


def setup(args) -> torch.device:
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda" and args.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    torch.manual_seed(args.seed)
    return device


def main(argv=None) -> None:
    args = parse_args(argv)
    device = setup(args)
    clock = Clock(time.time(), args.max_minutes)
    rng = np.random.default_rng(args.seed)
    generator = torch.Generator(device).manual_seed(args.seed)
    config = load_config(args.config)
    vae, unet, text = build_models(config, device)
    count = lambda m: sum(p.numel() for p in m.parameters()) / 1e6  # noqa: E731
    log(clock, f"params: unet {count(unet):.2f}M, vae {count(vae):.2f}M, text {count(text):.2f}M; device {device}")

    # (a) VAE, then frozen
    if args.vae_from:
        load_vae(vae, args.vae_from)
        log(clock, f"VAE taken from {args.vae_from}")
    else:
        train_vae(vae, args, rng, generator, clock)
    vae.eval().requires_grad_(False)
    vae_report = check_vae(vae, rng, clock)

    # (b) scale_factor, and the latents stage (c) learns from
    scale_factor = measure_scale_factor(vae, rng, generator)
    write_scale_factor(args.config, scale_factor)
    log(clock, f"scale_factor {scale_factor:.5f} written to {args.config}")
    scenes, mean, std = encode_scenes(vae, rng, args.latent_scenes)
    log(clock, f"encoded {len(scenes)} scenes; posterior std mean {std.mean().item():.4f}")

    # (c) UNet + text encoder
    train_diffusion(unet, text, (mean, std), scenes, scale_factor, config, args, rng, generator, clock)

    weights = checkpoint_state_dict(unet.eval(), vae, text.eval(), config)
    metadata = {"recipe": recipe_json(args),
                "scale_factor": f"{scale_factor:.5f}", "vae_check": json.dumps(vae_report)}
    save(weights, args.out, metadata)
    size_mb = args.out.stat().st_size / 2**20
    log(clock, f"wrote {args.out} ({size_mb:.1f} MiB, {len(weights)} tensors)")


if __name__ == "__main__":
    main()
