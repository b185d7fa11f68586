"""Where randomness comes from: one CPU generator per image.

Image i of a run has its own seed; its generator's first draw is x_T (or img2img's forward noise)
and later draws (DDIM with η > 0) continue the same stream. Drawing on the CPU in float32 and then
moving to the device makes a seed give the same start noise on any device and at any batch size.
"""

import torch


class NoiseSource:
    def __init__(self, seeds: list[int]):
        self.seeds = list(seeds)
        self._generators = [torch.Generator("cpu").manual_seed(seed) for seed in self.seeds]

    def draw(self, latent_shape: tuple[int, int, int], device, dtype=torch.float32) -> torch.Tensor:
        """[B, C, h, w] noise, one [1, C, h, w] draw from each image's generator."""
        draws = [torch.randn((1, *latent_shape), generator=g, dtype=torch.float32) for g in self._generators]
        return torch.cat(draws).to(device=device, dtype=dtype)

    def like(self, x: torch.Tensor) -> torch.Tensor:
        return self.draw(tuple(x.shape[1:]), x.device, x.dtype)
