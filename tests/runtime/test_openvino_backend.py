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
    """Loaded as run.render loads for --backend openvino: the parts the graphs replace left in the file."""
    from sd_cli.loading.loader import load_prepared, prepare_checkpoint

    model = load_prepared(prepare_checkpoint(ckpt), dtype=dtype, defer=openvino_backend.deferred_keys()).model
    openvino_backend.use_openvino(model, lambda: key)
    return model


def replaced_parts(model) -> dict:
    """The torch modules the graphs replace (the text tower's token embedding runs in torch before its graph)."""
    vae, tower = model.first_stage_model, model.text_towers[0]
    return {"unet": model.model.diffusion_model._orig_mod, "decoder": vae.decoder,
            "post_quant_conv": vae.post_quant_conv, "text blocks": tower.transformer, "ln_final": tower.ln_final}


def holding(model) -> list[str]:
    from sd_cli.loading.deferred import holds_weights

    held = [name for name, module in replaced_parts(model).items() if holds_weights(module)]
    return held + (["positional_embedding"] if not model.text_towers[0].positional_embedding.is_meta else [])


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
    # (its cached graphs keep f16 constants: test_the_bf16_cache_keeps_f16_constants)
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


def test_after_the_graphs_run_the_replaced_torch_parts_hold_no_weights(sd1_ckpt, shared_cache):
    from sd_cli.loading.deferred import holds_weights

    model = routed(sd1_ckpt)
    assert holding(model) == []  # loaded on meta: nothing read from the file
    images = txt2img(model, *ARGS)
    assert holding(model) == []  # converted (or imported) and given up again
    assert holds_weights(model.first_stage_model.encoder)  # img2img's encoder runs in torch: loaded as usual
    assert model.text_towers[0].token_embedding.weight.is_meta is False
    assert model.device == torch.device("cpu") and model.dtype == torch.float32
    expected = txt2img(load_model(sd1_ckpt).model, *ARGS)
    assert float((images - expected).abs().max()) < 1e-4


def test_a_cache_hit_never_reads_the_replaced_weights(sd1_ckpt, cache, monkeypatch):
    from sd_cli.loading.deferred import DeferredWeights

    first_model = routed(sd1_ckpt)
    first = txt2img(first_model, *ARGS)
    assert first_model.deferred.materialisations == 3  # UNet, decoder, text encoder: read once each to convert
    reads = []
    materialise = DeferredWeights.materialise
    monkeypatch.setattr(DeferredWeights, "materialise", lambda self, module, prefix: (
        reads.append(prefix), materialise(self, module, prefix)))
    monkeypatch.setattr(ov, "convert_model", lambda *a, **k: pytest.fail("converted although cached"))
    model = routed(sd1_ckpt)
    assert torch.equal(txt2img(model, *ARGS), first)
    assert (reads, model.deferred.materialisations, holding(model)) == ([], 0, [])


def test_a_new_shape_reads_the_weights_from_the_file_again_and_gives_the_eager_pixels(sd1_ckpt, shared_cache):
    model = routed(sd1_ckpt)
    txt2img(model, *ARGS)
    before = model.deferred.materialisations
    wider = (["a red cube"], [""], [7], PARAMS, 96, 64)  # a second size in the same process (hires fix, prompt file)
    images = txt2img(model, *wider)
    assert model.deferred.materialisations == before + 2  # the UNet and the decoder at the new size; the text is cached
    assert holding(model) == []
    expected = txt2img(load_model(sd1_ckpt).model, *wider)
    assert images.shape == expected.shape == (1, 3, 96, 64)
    assert float((images - expected).abs().max()) < 1e-4


def test_a_lora_merge_reads_the_weights_and_keeps_them(sd1_ckpt):
    from sd_cli.loading.lora import LoraMerger

    model = routed(sd1_ckpt)
    eager = load_model(sd1_ckpt).model
    unet = model.model.diffusion_model._orig_mod
    LoraMerger(model, weights_frozen=True).apply(())  # no LoRA: nothing is read
    assert holding(model) == []
    model.deferred.pin()  # what LoraMerger.apply does before merging a LoRA into the weights in place
    assert sorted(holding(model)) == sorted([*replaced_parts(model), "positional_embedding"])
    assert torch.equal(unet.out[2].weight, eager.model.diffusion_model.out[2].weight)
    model.deferred.free(unet, openvino_backend.UNET_PREFIX)
    assert not unet.out[2].weight.is_meta  # pinned: a conversion after it does not drop the merged weights


def test_the_bf16_cache_keeps_f16_constants(sd1_ckpt, cache):
    """Two bytes less per UNet weight than the float32 graph, on disk and to read at import (the full
    UNet's blob: 1.72 against 3.44 GB); the bf16 tolerance above holds with it."""
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    sizes = {}
    for dtype in (torch.float32, torch.bfloat16):
        model = routed(sd1_ckpt, dtype)
        context = torch.randn(1, 77, int(model.config.unet_params["context_dim"]), generator=torch.Generator().manual_seed(2))
        before = set(cache.glob("unet-*.blob")) if cache.exists() else set()
        with torch.inference_mode():
            model.unet(x.to(dtype), torch.tensor([500]), context.to(dtype))
        (blob,) = set(cache.glob("unet-*.blob")) - before
        sizes[dtype] = blob.stat().st_size
    weights = sum(p.numel() for p in load_model(sd1_ckpt).model.model.diffusion_model.parameters())
    # the tiny graph's structure is a larger share of its blob than the full UNet's; its weights still halve
    assert 0.8 * 2 * weights < sizes[torch.float32] - sizes[torch.bfloat16] <= 2 * weights


def test_an_sd2_file_measured_for_v_reads_its_unet_for_the_test_call_only(sd2v_ckpt):
    """A released SD 2.x file has no YAML beside it, so the loader measures eps against v with one UNet call."""
    from sd_cli.loading import loader
    from sd_cli.loading.deferred import holds_weights

    eager = loader._settle_parameterization(load_model(sd2v_ckpt).model, "tiny")
    model = loader.load_prepared(loader.prepare_checkpoint(sd2v_ckpt), defer=openvino_backend.deferred_keys()).model
    assert not holds_weights(model.model.diffusion_model)
    model = loader._settle_parameterization(model, "tiny")
    assert model.config.parameterization == eager.config.parameterization
    assert model.deferred.materialisations == 1
    assert not holds_weights(model.model.diffusion_model)
