"""--offload: the model waits in host memory and only the part at work sits on the GPU.

Stable Diffusion runs its three networks one after another: the text encoder once per batch, the
UNet for every step, the VAE once at the end (and at the start of img2img). So the GPU needs to
hold only one of them at a time: for SD 1.5 in fp16 that is the UNet's 1.7 GB instead of the
whole 2.1 GB, and for SD 2.x the 0.7 GB text encoder never shares the GPU with the UNet. The cost
is one host-to-GPU copy of each part per batch and one back, not per step: the UNet stays on the
GPU for all of its steps.

Each part's tensors live in one flat host buffer, page-locked when the GPU is a CUDA device, so
moving a part in is a single copy at the bus's full speed into a single GPU allocation, and moving
it out copies back into the same buffer: no host memory is allocated or faulted in per move, as
`module.to()` would at every move (its cost is in docs/benchmarks.md). The copy back keeps whatever
changed on the GPU, such as a LoRA merged between batches.

depth2img's MiDaS estimator (0.5 GB in fp32) is not one of the parts: once built it stays on the GPU.
The parts are moved whole (model-level offload), not layer by layer: layer-level offload would
copy the UNet's weights at every step, which costs far more time than the GPUs it targets save.
"""

from __future__ import annotations

import torch
from torch import nn

ALIGNMENT = 64  # bytes: every tensor's slice of a flat buffer starts aligned for any dtype


class OffloadedPart:
    """One part's parameters and buffers, kept as views of one flat host buffer between uses."""

    def __init__(self, module: nn.Module, pin: bool):
        self.slots = _tensor_slots(module)  # (owning module, attribute, is_parameter)
        tensors = [_get(slot) for slot in self.slots]
        self.offsets, size = _layout(tensors)  # byte offsets, the same in the host and device buffers
        self.host = torch.empty(size, dtype=torch.uint8, pin_memory=pin)
        self.views = []
        for slot, tensor, offset in zip(self.slots, tensors, self.offsets):
            view = _typed_view(self.host, offset, tensor)
            view.copy_(tensor)
            _set(slot, view)  # the loaded tensor is released here, part by part
            self.views.append(view)
        self.on_device: torch.Tensor | None = None

    def move_in(self, device: torch.device) -> None:
        """One copy of the whole buffer to `device`; the part's tensors become views of it."""
        self.on_device = self.host.to(device, non_blocking=self.host.is_pinned())
        for slot, view, offset in zip(self.slots, self.views, self.offsets):
            _set(slot, _typed_view(self.on_device, offset, view))

    def move_out(self) -> None:
        """Copy the part back into the host buffer (keeping any change made on the device) and point
        it at the host again; the device copy is freed."""
        currents = [_get(slot) for slot in self.slots]
        if self._still_views_of_device_copy(currents):
            if self.on_device.data_ptr() != self.host.data_ptr():  # on a CPU "device" it is the host
                self.host.copy_(self.on_device)  # one copy for the whole part
        else:  # something replaced tensors on the device (the VAE's float32 retry does): one by one
            for view, current in zip(self.views, currents):
                if current.data_ptr() != view.data_ptr():
                    view.copy_(current)
        for slot, view in zip(self.slots, self.views):
            _set(slot, view)
        self.on_device = None

    def _still_views_of_device_copy(self, currents: list[torch.Tensor]) -> bool:
        base = self.on_device.data_ptr()
        return all(current.device == self.on_device.device and current.data_ptr() == base + offset
                   for current, offset in zip(currents, self.offsets))


class ModelOffload:
    """Which of the model's parts is on the execution device; moves one in and the last one out."""

    def __init__(self, parts: dict[str, nn.Module], device: torch.device):
        self.device = torch.device(device)
        pin = self.device.type == "cuda" and torch.cuda.is_available()
        self.parts = parts  # "text encoder", "UNet", "VAE" → module
        self.offloaded = {name: OffloadedPart(module, pin) for name, module in parts.items()}  # their host buffers
        self.resident: str | None = None
        self.moves: list[str] = []  # every part moved in, in order (what the tests and the log read)

    def use(self, name: str) -> None:
        """Make `name` the part on the execution device (no copy when it already is)."""
        if self.resident == name:
            return
        if self.resident is not None:
            self.offloaded[self.resident].move_out()
        self.offloaded[name].move_in(self.device)
        self.resident = name
        self.moves.append(name)

    def release(self) -> None:
        """No part on the execution device: another model runs there next (the SDXL refiner)."""
        if self.resident is not None:
            self.offloaded[self.resident].move_out()
            self.resident = None


def enable_offload(model, device) -> None:
    """Keep `model` (loaded on the CPU) there, running each part on `device` in turn."""
    model.offload = ModelOffload(
        {"text encoder": model.text_module, "UNet": model.model.diffusion_model, "VAE": model.first_stage_model},
        device)


# -- where a module's tensors are --------------------------------------------------------------

def _tensor_slots(module: nn.Module) -> list[tuple[nn.Module, str, bool]]:
    """Every parameter and buffer of `module` as (owner, attribute name, is_parameter), each tensor once."""
    slots, seen = [], set()
    for owner in module.modules():
        for registry, is_parameter in ((owner._parameters, True), (owner._buffers, False)):
            for attribute, tensor in registry.items():
                if tensor is not None and id(tensor) not in seen:
                    seen.add(id(tensor))
                    slots.append((owner, attribute, is_parameter))
    return slots


def _get(slot) -> torch.Tensor:
    owner, attribute, is_parameter = slot
    tensor = (owner._parameters if is_parameter else owner._buffers)[attribute]
    return tensor.data if is_parameter else tensor


def _set(slot, value: torch.Tensor) -> None:
    owner, attribute, is_parameter = slot
    if is_parameter:
        owner._parameters[attribute].data = value  # the same Parameter object: references to it stay valid
    else:
        owner._buffers[attribute] = value


def _layout(tensors: list[torch.Tensor]) -> tuple[list[int], int]:
    """Byte offsets of each tensor in a flat buffer, each aligned, and the buffer's size."""
    offsets, end = [], 0
    for tensor in tensors:
        start = -(-end // ALIGNMENT) * ALIGNMENT
        offsets.append(start)
        end = start + tensor.numel() * tensor.element_size()
    return offsets, end


def _typed_view(flat: torch.Tensor, offset: int, like: torch.Tensor) -> torch.Tensor:
    """A view of `flat` (uint8) at byte `offset` with `like`'s dtype, shape and, where `like` is dense
    (contiguous or channels-last), its strides."""
    nbytes = like.numel() * like.element_size()
    typed = flat[offset:offset + nbytes].view(like.dtype)
    if like.dim() == 4 and like.is_contiguous(memory_format=torch.channels_last):
        return typed.as_strided(like.shape, like.stride())
    return typed.view(like.shape)
