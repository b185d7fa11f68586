"""`Linear`: nn.Linear whose float32 CPU matrix product runs on oneDNN instead of MKL.

On an x86 CPU, ATen's float32 `F.linear` calls MKL's sgemm. On the AMD EPYC this project is
measured on, MKL reaches about 200 GFLOP/s where oneDNN's matmul (the library torch already uses
for its CPU convolutions) reaches 400-470 on the UNet's shapes. The linear layers are a third of a
full-size UNet step in float32, so this takes a fifth off it (docs/benchmarks.md). In bfloat16
ATen already calls oneDNN, so nothing changes there.

The oneDNN call is `torch.ops.mkldnn._linear_pointwise`, the op torch's own compiler emits for CPU
linear layers; it has no autograd formula, so it is only used when no gradient is wanted (sampling
runs under inference mode; the training script needs gradients and gets `F.linear`). Same
parameters and names as nn.Linear, so checkpoints load unchanged and LoRAs merge into `weight`.
The result equals `F.linear` up to float rounding (a different summation order).
"""

import platform

import torch
import torch.nn.functional as F
from torch import nn


def _onednn_linear_available() -> bool:
    """oneDNN's linear op exists in this torch build and the CPU is x86 (where it was measured)."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


# Decided once at import: torch.compile traces `forward`, and this way it sees a constant.
ONEDNN_LINEAR = _onednn_linear_available()


def uses_onednn(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return (ONEDNN_LINEAR and x.device.type == "cpu" and x.dtype == torch.float32
            and weight.dtype == torch.float32 and not torch.is_grad_enabled())


class Linear(nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if uses_onednn(x, self.weight):
            return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")
        return F.linear(x, self.weight, self.bias)
