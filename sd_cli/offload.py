"""--offload: the model waits in host memory and only the part at work sits on the GPU.

Stable Diffusion runs its three networks one after another: the text encoder once per batch, the
UNet for every step, the VAE once at the end (and at the start of img2img). So the GPU needs to
hold only one of them at a time: for SD 1.5 in fp16 that is the UNet's 1.7 GB instead of the
whole 2.1 GB, and for SD 2.x the 0.7 GB text encoder never shares the GPU with the UNet. The cost
is one host-to-GPU copy of each part per batch (a few hundred milliseconds for the UNet over PCIe),
not per step: the UNet stays on the GPU for all of its steps.

depth2img's MiDaS estimator (0.5 GB in fp32) is not one of the parts: once built it stays on the GPU.
The parts are moved whole (model-level offload), not layer by layer: layer-level offload would
copy the UNet's weights at every step, which costs far more time than the GPUs it targets save.
"""

from __future__ import annotations

import torch
from torch import nn

HOME = torch.device("cpu")


class ModelOffload:
    """Which of the model's parts is on the execution device; moves one in and the last one out."""

    def __init__(self, parts: dict[str, nn.Module], device: torch.device):
        self.parts = parts  # "text encoder", "UNet", "VAE" → module
        self.device = torch.device(device)
        self.resident: str | None = None
        self.moves: list[str] = []  # every part moved in, in order (what the tests and the log read)

    def use(self, name: str) -> None:
        """Make `name` the part on the execution device (no copy when it already is)."""
        if self.resident == name:
            return
        if self.resident is not None:
            self.parts[self.resident].to(HOME)
        self.parts[name].to(self.device)
        self.resident = name
        self.moves.append(name)


def enable_offload(model, device) -> None:
    """Keep `model` (loaded on the CPU) there, running each part on `device` in turn."""
    model.offload = ModelOffload(
        {"text encoder": model.cond_stage_model, "UNet": model.model.diffusion_model, "VAE": model.first_stage_model},
        device)
