"""--preview PATH: a small PNG of the image being sampled, rewritten every few steps of a batch.

The picture is the model's current guess of the finished latent (x̂₀), projected linearly to RGB:
no extra weights and no VAE decode (stable-diffusion.cpp's `--preview proj` is the same idea). The
guess comes from the UNet call the samplers make anyway: the run's session is wrapped so that each
call's input, timestep and output are kept, and the step callback turns the latest into a picture.
Nothing is changed on the way, so the rendered images stay bit-identical with or without a preview.
One pixel per latent cell: W/8 x H/8, the batch's first image.
"""

from pathlib import Path

import numpy as np
import torch

# RGB ≈ Σ_c latent[c] · LATENT_RGB[c] for the SD 1.x/2.x VAE, on latents as the samplers hold them
# (scaled by the model's scale factor), giving roughly [-1, 1]: the widely published linear
# approximation of that VAE's decoder, as a table of our own.
LATENT_RGB = (
    (0.298, 0.207, 0.208),
    (0.187, 0.286, 0.173),
    (-0.158, 0.189, 0.264),
    (-0.184, -0.271, -0.473),
)
NO_BIAS = (0.0, 0.0, 0.0)
SD_PROJECTION = (LATENT_RGB, NO_BIAS)
# The built-in model's VAE was trained apart from SD's, so it has a table of its own, with a constant:
# fitted by builtin_model/preview_table.py (least squares over 256 encoded scenes); on held-out
# scenes it halves the error of SD's table (docs/builtin-model.md#the-live-preview).
BUILTIN_LATENT_RGB = (
    ((0.561, 0.919, 0.887), (0.214, 0.148, -0.181), (0.059, 1.26, 1.66), (-0.446, -0.766, 0.096)),
    (0.102, -0.319, -0.233),
)
EVERY = 5  # steps between rewrites; the last step of each pass is always written


def latent_to_rgb(latent: torch.Tensor, projection=SD_PROJECTION) -> np.ndarray:
    """A [4, h, w] latent as an [h, w, 3] uint8 picture: latent · table + bias, its [-1, 1] mapped to 0..255."""
    table, bias = projection
    factors = torch.tensor(table, dtype=torch.float32)
    rgb = torch.einsum("chw,cr->hwr", latent.detach().float().cpu(), factors) + torch.tensor(bias, dtype=torch.float32)
    return ((rgb.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()


def projection_for(checkpoint_path) -> tuple:
    """The built-in model's own table for its file; SD's for every other checkpoint."""
    from sd_cli.loading.packaged import builtin_checkpoint

    same = checkpoint_path is not None and Path(checkpoint_path).resolve() == builtin_checkpoint().resolve()
    return BUILTIN_LATENT_RGB if same else SD_PROJECTION


class Preview:
    """The preview of one batch: `watching` gives the session and step callback to sample with."""

    def __init__(self, path: Path, scale: float):
        self.path = path
        self.guided = scale != 1.0  # guidance batches [uncond, cond] into one UNet call (sampling/guidance.py)
        self.scale = scale
        self.last_call = None  # (x, t, out) of the latest UNet call

    def watching(self, session, progress):
        """(model, progress) to hand the pipeline: the session seen through, and a callback that
        calls `progress` and rewrites the preview every EVERY steps."""

        def step(done: int, total: int) -> None:
            progress(done, total)
            if done % EVERY == 0 or done == total:
                self.write(session)

        return _WatchedSession(session, self), step

    def write(self, session) -> None:
        if self.last_call is None:
            return
        from sd_cli.files.output import save_image

        picture = latent_to_rgb(self.predicted_x0(session), projection_for(session.checkpoint_path))
        save_image(picture, self.path)  # atomic: a viewer never sees half a file

    def predicted_x0(self, session) -> torch.Tensor:
        """The first image's x̂₀ [4, h, w] from the latest UNet call (input x_t = √ᾱ·x₀ + √(1-ᾱ)·ε)."""
        x, t, out = self.last_call
        x, out = x[:, :4].float(), out.float()  # inpaint and depth models get extra input channels
        if self.guided:
            uncond, cond = out.chunk(2)
            x, t, out = x.chunk(2)[1], t.chunk(2)[1], uncond + self.scale * (cond - uncond)
        alpha_bar = _alpha_bar(session.alphas_cumprod, float(t[0]))
        if session.parameterization == "v":
            x0 = alpha_bar.sqrt() * x - (1 - alpha_bar).sqrt() * out
        else:
            x0 = (x - (1 - alpha_bar).sqrt() * out) / alpha_bar.sqrt()
        return x0[0]


class _WatchedSession:
    """The session, with each UNet call's input, timestep and output kept for the preview."""

    def __init__(self, session, preview: Preview):
        self._session, self._preview = session, preview

    def __getattr__(self, name):
        return getattr(self._session, name)

    def unet(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, *vector) -> torch.Tensor:
        out = self._session.unet(x, t, context, *vector)
        self._preview.last_call = (x, t, out)
        return out


def _alpha_bar(alphas_cumprod: torch.Tensor, t: float) -> torch.Tensor:
    """ᾱ at a (fractional, for the k-diffusion samplers) timestep, linearly between the table's entries."""
    table = alphas_cumprod.detach().float().cpu()
    low = min(int(t), len(table) - 1)
    high = min(low + 1, len(table) - 1)
    return torch.lerp(table[low], table[high], torch.tensor(t - low, dtype=torch.float32))
