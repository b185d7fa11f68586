"""Weights left in the checkpoint file until torch needs them.

Two users: a part that runs as a compiled OpenVINO graph (--backend openvino) needs its torch
weights only to convert a graph that is not cached yet, and on the CPU the parts that a denoising
step does not use wait in the file between their uses (runtime/waiting_parts.py). The loader
builds such parts with parameters on the meta device (shape and dtype, no memory) and keeps the
checkpoint's own tensors, which are views of the memory-mapped file: no page of them is read until
a part is materialised. `materialise` puts them into the module as the loader would have (cast and
laid out, or the file's view itself); `free` puts the meta stand-ins back and gives the file pages
to the kernel again, so that the process holds the part only while it is used.
"""

from __future__ import annotations

import torch
from torch import nn

from sd_cli.loading.mapped_pages import MappedFile, copied_out


class DeferredWeights:
    """The file tensors of the deferred module keys, and how the loader casts and lays them out."""

    def __init__(self, wanted, device, channels_last_convs: bool, mapped_file: MappedFile | None):
        self.wanted = wanted  # module key -> whether the loader leaves it in the file
        self.device = torch.device(device)
        self.channels_last_convs = channels_last_convs
        self.mapped_file = mapped_file
        self.sources: dict[str, torch.Tensor] = {}  # module key -> the file's tensor (mapped, unread)
        self.pinned = False  # weights another feature changed in place (a merged LoRA) are never freed
        self.materialisations = 0  # how often a part's weights were read from the file (tests, logs)
        self.parts: dict[str, nn.Module] = {}  # prefix -> the module now at that place (runtime/openvino_backend.py)

    def defer(self, key: str, source: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Keep `source` for `key`; the module gets a meta tensor of the dtype it would have run in."""
        self.sources[key] = source
        return torch.empty(source.shape, dtype=dtype if source.is_floating_point() else source.dtype, device="meta")

    def keys_under(self, prefix: str) -> list[str]:
        return [key for key in self.sources if key.startswith(prefix)]

    def materialise(self, module: nn.Module, prefix: str) -> None:
        """Fill `module` (the model's submodule at `prefix`) from the file where it holds meta tensors."""
        filled = False
        for key in self.keys_under(prefix):
            name = key[len(prefix):]
            current = _tensor_at(module, name)
            if not current.is_meta:
                continue
            # As the loader makes it, so that a part read here computes bit for bit what it computes
            # loaded whole: a view of the file where nothing is cast or laid out, and a normal tensor
            # even when a run calls this under inference mode (torch runs some ops on inference
            # tensors by another path, with other rounding; nn.MultiheadAttention in a batch of two).
            with torch.inference_mode(False):
                _set_tensor(module, name, copied_out(self.sources[key], self.device, current.dtype,
                                                     self.channels_last_convs, self.mapped_file))
            filled = True
        self.materialisations += filled

    def free(self, module: nn.Module, prefix: str) -> None:
        """Meta stand-ins again for the deferred keys under `prefix` (their dtype kept), unless pinned;
        the file's pages of the ones that were views of it are given back too."""
        if self.pinned:
            return
        for key in self.keys_under(prefix):
            name = key[len(prefix):]
            current = _tensor_at(module, name)
            if current.is_meta:
                continue
            _set_tensor(module, name, torch.empty(current.shape, dtype=current.dtype, device="meta"))
            source = self.sources[key]
            if self.mapped_file is not None and current.data_ptr() == source.data_ptr():
                # clean pages (nothing writes a part that can be freed: a LoRA merge pins first)
                self.mapped_file.release(source)

    def pin(self) -> None:
        """Materialise every registered part for good (their values are about to be changed in place)."""
        for prefix, module in self.parts.items():
            self.materialise(module, prefix)
        self.pinned = True


def holds_weights(module: nn.Module) -> bool:
    """Whether any parameter or buffer of `module` has memory (is not on the meta device)."""
    return any(not t.is_meta for t in [*module.parameters(), *module.buffers()])


def _tensor_at(module: nn.Module, name: str) -> torch.Tensor:
    owner, _, leaf = name.rpartition(".")
    sub = module.get_submodule(owner)
    return sub._parameters[leaf] if leaf in sub._parameters else sub._buffers[leaf]


def _set_tensor(module: nn.Module, name: str, value: torch.Tensor) -> None:
    owner, _, leaf = name.rpartition(".")
    sub = module.get_submodule(owner)
    if leaf in sub._parameters:
        # requires_grad as loaded: some CPU kernels take another path by it (other rounding), even
        # under inference mode
        sub._parameters[leaf] = nn.Parameter(value, requires_grad=sub._parameters[leaf].requires_grad)
    else:
        sub._buffers[leaf] = value
