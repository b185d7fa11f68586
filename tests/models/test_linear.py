"""sd_cli.models.linear.Linear: oneDNN for float32 CPU inference, F.linear everywhere else."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.profiler import ProfilerActivity, profile

from sd_cli.models import linear
from sd_cli.models.linear import Linear

needs_onednn = pytest.mark.skipif(not linear.ONEDNN_LINEAR, reason="oneDNN linear is only used on x86 builds with mkldnn")


def _ops_run(fn) -> set[str]:
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return {event.name for event in prof.events()}


def _layer(dtype=torch.float32, bias=True) -> Linear:
    torch.manual_seed(0)
    return Linear(96, 200, bias=bias).to(dtype)


@needs_onednn
@pytest.mark.parametrize("bias", [True, False])
def test_inference_in_float32_runs_onednn_and_matches_f_linear(bias):
    layer = _layer(bias=bias)
    x = torch.randn(2, 77, 96)
    with torch.inference_mode():
        ops = _ops_run(lambda: layer(x))
        out = layer(x)
        expected = F.linear(x, layer.weight, layer.bias)
    assert "mkldnn::_linear_pointwise" in ops
    assert out.shape == (2, 77, 200)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


@needs_onednn
def test_non_contiguous_input_gives_the_same_result():
    layer = _layer()
    x = torch.randn(96, 154).t()  # a transposed view, as attention's reshaped outputs can be
    with torch.no_grad():
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias), rtol=1e-5, atol=1e-5)


def test_training_uses_f_linear_and_gradients_flow():
    layer = _layer()
    x = torch.randn(4, 96, requires_grad=True)
    ops = _ops_run(lambda: layer(x).square().sum().backward())
    assert "mkldnn::_linear_pointwise" not in ops
    assert "aten::linear" in ops
    assert layer.weight.grad is not None and x.grad is not None
    expected_grad = 2 * F.linear(x, layer.weight, layer.bias).detach().T @ x.detach()
    torch.testing.assert_close(layer.weight.grad, expected_grad, rtol=1e-5, atol=1e-4)


def test_bfloat16_stays_on_aten():
    layer = _layer(torch.bfloat16)
    x = torch.randn(3, 96, dtype=torch.bfloat16)
    with torch.inference_mode():
        ops = _ops_run(lambda: layer(x))
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias))
    assert "mkldnn::_linear_pointwise" not in ops


def test_an_nn_linear_state_dict_loads_strictly_and_computes_the_same():
    torch.manual_seed(1)
    reference = nn.Linear(96, 200)
    layer = Linear(96, 200)
    layer.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(5, 96)
    with torch.inference_mode():
        torch.testing.assert_close(layer(x), reference(x), rtol=1e-5, atol=1e-5)
