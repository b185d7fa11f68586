"""--backend openvino (sd_cli/runtime/openvino_backend.py): sd_cli's own modules as OpenVINO graphs.

fp32 must give the eager path's numbers (to float32 rounding, far inside the tolerance the bf16
tests hold, tests/loading/test_loading.py: mean |Δ| < 0.05 on the image); bf16 must stay within
that tolerance of fp32; a second model with the same key reads the compiled graphs from the
cache without converting. Skipped only where openvino is not installed.
"""

import sys

import pytest
import torch

from sd_cli.loading.loader import load_model
from sd_cli.pipelines.txt2img import txt2img, txt2img_latents
from sd_cli.sampling.denoising import SamplingParams

ov = pytest.importorskip("openvino")

from sd_cli.runtime import openvino_backend  # noqa: E402  (needs openvino only when used)

PARAMS = SamplingParams(sampler="euler", steps=3)
ARGS = (["a red cube"], [""], [7], PARAMS, 64, 64)
BF16_IMAGE_TOLERANCE = 0.05  # test_precision_bf16_runs_close_to_fp32's


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty cache of the test's own."""
    monkeypatch.setenv("SD_CLI_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache" / "openvino"


@pytest.fixture(scope="module")
def shared_cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("openvino-shared")


@pytest.fixture
def shared_cache(shared_cache_dir, monkeypatch):
    """A cache the numerics tests share: each graph is converted once for the module (conversion is slow)."""
    monkeypatch.setenv("SD_CLI_CACHE_DIR", str(shared_cache_dir))
    return shared_cache_dir / "openvino"


def routed(ckpt, dtype=torch.float32, key="tiny"):
    model = load_model(ckpt, dtype=dtype).model
    openvino_backend.use_openvino(model, lambda: key)
    return model


def test_fp32_graphs_give_the_eager_latents_and_pixels(sd1_ckpt, shared_cache):
    eager = load_model(sd1_ckpt).model
    model = routed(sd1_ckpt)
    expected_latents = txt2img_latents(eager, *ARGS)
    latents = txt2img_latents(model, *ARGS)
    assert float((latents - expected_latents).norm() / expected_latents.norm()) < 1e-5
    images, expected = model.decode_latents(latents), eager.decode_latents(expected_latents)
    assert images.dtype == expected.dtype == torch.float32
    assert float((images - expected).abs().max()) < 1e-4 < BF16_IMAGE_TOLERANCE


def test_the_unet_call_matches_eager_at_a_slice(sd1_ckpt, shared_cache):
    eager = load_model(sd1_ckpt).model
    model = routed(sd1_ckpt)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 8, 8, generator=generator)
    t = torch.tensor([999, 999])
    with torch.inference_mode():
        context = eager.encode_text(["a red cube", ""])
        assert torch.allclose(model.encode_text(["a red cube", ""]), context, atol=1e-5, rtol=1e-5)
        expected = eager.unet(x, t, context)
        out = model.unet(x, t, context)
    torch.testing.assert_close(out[0, :2, :2, :2], expected[0, :2, :2, :2], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_the_cache_is_read_by_the_next_model_rewritten_when_broken_and_keyed(sd1_ckpt, cache, monkeypatch, capsys):
    first = txt2img(routed(sd1_ckpt), *ARGS)
    blobs = sorted(cache.iterdir())
    assert sorted(p.name.split("-")[0] for p in blobs) == ["text0", "unet", "vae"]
    convert = ov.convert_model
    monkeypatch.setattr(ov, "convert_model", lambda *a, **k: pytest.fail("converted although cached"))
    assert torch.equal(txt2img(routed(sd1_ckpt), *ARGS), first)
    assert sorted(cache.iterdir()) == blobs
    monkeypatch.setattr(ov, "convert_model", convert)
    for blob in blobs:
        blob.write_bytes(b"not a graph")
    assert torch.equal(txt2img(routed(sd1_ckpt), *ARGS), first)
    assert "cannot be read" in capsys.readouterr().err
    assert all(blob.stat().st_size > 1000 for blob in blobs)  # rewritten


def test_the_key_names_the_weights_shapes_and_precision(sd1_ckpt):
    model = load_model(sd1_ckpt).model
    part = openvino_backend.OpenVinoPart("unet", model.model.diffusion_model, lambda: "weights A", torch.float32,
                                         torch.float32)
    signature = (((2, 4, 8, 8), "torch.float32"),)
    config = {"INFERENCE_PRECISION_HINT": "f32"}
    key = part._key(ov, signature, config)
    assert key == part._key(ov, signature, config)
    part.weights_key = lambda: "weights B"  # e.g. another --vae or LoRA
    assert part._key(ov, signature, config) != key
    part.weights_key = lambda: "weights A"
    assert part._key(ov, (((2, 4, 16, 8), "torch.float32"),), config) != key
    assert part._key(ov, signature, {"INFERENCE_PRECISION_HINT": "bf16"}) != key


@pytest.mark.skipif("BF16" not in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"),
                    reason="this CPU has no bf16 for OpenVINO")
def test_bf16_graphs_stay_within_the_bf16_tolerance_of_fp32(sd1_ckpt, shared_cache):
    expected = txt2img(load_model(sd1_ckpt).model, *ARGS)
    images = txt2img(routed(sd1_ckpt, torch.bfloat16), *ARGS).float()
    eager_bf16 = txt2img(load_model(sd1_ckpt, dtype=torch.bfloat16).model, *ARGS).float()
    assert (images - expected).abs().mean() < BF16_IMAGE_TOLERANCE
    # as close as the eager bf16 path, within its own error again
    assert (images - expected).abs().mean() < 2 * (eager_bf16 - expected).abs().mean() + 0.01


def test_the_cli_renders_with_it_and_matches_the_eager_run(run_cli, sd1_ckpt, tmp_path, shared_cache):
    from PIL import Image
    import numpy as np

    common = ("txt2img", "a cat", "--ckpt", sd1_ckpt, "--steps", "2", "-W", "64", "-H", "64", "--seed", "3",
              "--precision", "fp32", "--no-watermark")
    eager = run_cli(*common, "-o", tmp_path / "eager.png")
    result = run_cli(*common, "--backend", "openvino", "-o", tmp_path / "ov.png")
    assert (eager.code, result.code) == (0, 0)
    assert "openvino:" in result.stderr
    a = np.asarray(Image.open(tmp_path / "eager.png"), dtype=int)
    b = np.asarray(Image.open(tmp_path / "ov.png"), dtype=int)
    assert np.abs(a - b).max() <= 1  # float32 rounding moves a pixel by one level at most


@pytest.mark.parametrize("flags, message", [
    (("--backend", "onnx"), "--backend onnx: not a backend; use one of torch, openvino"),
    (("--backend", "openvino", "--compile"), "--backend openvino and --compile do not go together"),
    (("--backend", "openvino", "--device", "cuda"), "--backend openvino runs on the CPU"),
])
def test_bad_combinations_are_one_line_errors(run_cli, sd1_ckpt, tmp_path, flags, message):
    result = run_cli("txt2img", "a cat", "--ckpt", sd1_ckpt, "--steps", "1", *flags, "-o", tmp_path / "x.png")
    assert result.code == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert not (tmp_path / "x.png").exists()


def test_without_the_package_the_error_says_how_to_install_it(run_cli, sd1_ckpt, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino raises ImportError
    result = run_cli("txt2img", "a cat", "--ckpt", sd1_ckpt, "--steps", "1", "--backend", "openvino",
                     "-o", tmp_path / "x.png")
    assert result.code == 2
    assert result.stderr.strip() == ("error: --backend openvino needs the openvino package, which is not installed: "
                                     "pip install openvino (or pip install 'sd-cli[openvino]')")
    assert not (tmp_path / "x.png").exists()
