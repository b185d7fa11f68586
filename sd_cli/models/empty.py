"""Building modules without weights: every tensor will be assigned from a checkpoint.

`torch.device("meta")` already avoids allocating memory, but the modules' constructors still run
their random initialisers on the meta tensors, and for some of them (`normal_`, `trunc_normal_`)
torch's meta kernel is a Python reference that imports torch's compiler stack on first use: about
1.2 s of every load, spent on values that are thrown away.
"""

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

# torch.nn.init's in-place initialisers, as the layers' reset_parameters call them (by module attribute)
_INITIALISERS = ("uniform_", "normal_", "trunc_normal_", "constant_", "ones_", "zeros_", "eye_",
                 "dirac_", "xavier_uniform_", "xavier_normal_", "kaiming_uniform_", "kaiming_normal_",
                 "orthogonal_", "sparse_")


def _leave_as_is(tensor: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    return tensor


@contextlib.contextmanager
def empty_modules() -> Iterator[None]:
    """Construct modules on the meta device with their initialisers switched off.

    Only for modules whose every parameter and buffer is then assigned (`load_state_dict(...,
    strict=True, assign=True)`); the initialisers are restored on exit.
    """
    saved = {name: getattr(nn.init, name) for name in _INITIALISERS}
    try:
        for name in _INITIALISERS:
            setattr(nn.init, name, _leave_as_is)
        with torch.device("meta"):
            yield
    finally:
        for name, function in saved.items():
            setattr(nn.init, name, function)
