"""Weights left in the checkpoint file until torch needs them (--backend openvino).

A part that runs as a compiled OpenVINO graph needs its torch weights only to convert a graph
that is not cached yet. The loader therefore builds such parts with parameters on the meta
device (shape and dtype, no memory) and keeps the checkpoint's own tensors, which are views of
the memory-mapped file: no page of them is read until a part is materialised. `materialise`
copies them into the module (cast and laid out as the loader would have); `free` puts the meta
stand-ins back and gives the file pages to the kernel again, so after a conversion the process
holds the graph and not also the torch weights. A later new shape re-reads them from the file.
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
            # always a copy: a view of the file would keep its pages resident after `free`
            copy = copied_out(self.sources[key], self.device, current.dtype, self.channels_last_convs,
                              self.mapped_file, always_copy=True)
            _set_tensor(module, name, copy)
            filled = True
        self.materialisations += filled

    def free(self, module: nn.Module, prefix: str) -> None:
        """Meta stand-ins again for the deferred keys under `prefix` (their dtype kept), unless pinned."""
        if self.pinned:
            return
        for key in self.keys_under(prefix):
            name = key[len(prefix):]
            current = _tensor_at(module, name)
            if not current.is_meta:
                _set_tensor(module, name, torch.empty(current.shape, dtype=current.dtype, device="meta"))

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
        sub._parameters[leaf] = nn.Parameter(value, requires_grad=False)
    else:
        sub._buffers[leaf] = value
