"""The SDXL benchmark's own checkpoint writer: the file it times is sd_xl_base's layout, read back right.
No timings are asserted."""

import math

import torch
from safetensors.torch import load_file

from benchmarks import sdxl as bench


def test_the_streamed_safetensors_reads_back_with_each_kind_of_tensor(tmp_path):
    shapes = {"a.weight": ((6, 4, 3, 3), "weight"), "a.bias": ((6,), "zeros"), "norm.weight": ((6,), "ones"),
              "ids": ((1, 77), "positions"), "denoiser.sigmas": ((1000,), "sigmas"), "scalar": ((), "ones")}
    bench.write_random_safetensors(tmp_path / "x.safetensors", shapes)
    read = load_file(str(tmp_path / "x.safetensors"))
    assert {key: tuple(value.shape) for key, value in read.items()} == {key: shape for key, (shape, _) in shapes.items()}
    assert read["a.weight"].dtype == torch.float16 and read["denoiser.sigmas"].dtype == torch.float32
    assert abs(read["a.weight"].float().std().item() - 1 / math.sqrt(36)) < 0.05
    assert torch.equal(read["a.bias"], torch.zeros(6, dtype=torch.float16)) and read["scalar"].item() == 1
    assert torch.equal(read["ids"], torch.arange(77)[None])
    assert read["denoiser.sigmas"][0] < 0.03 and 14.5 < read["denoiser.sigmas"][-1] < 14.7


def test_the_shapes_are_sd_xl_base_and_match_the_model_strictly():
    """Detected as SDXL; every tensor the YAML's model has, none more, shapes equal (on the meta device)."""
    from sd_cli.loading.config import load_config
    from sd_cli.loading.detection import detect_family
    from sd_cli.loading.packaged import packaged_config
    from sd_cli.loading.strict import compare
    from sd_cli.models.diffusion_engine import DiffusionEngine
    from sd_cli.models.empty import empty_modules
    from sd_cli.models.sdxl_conditioning import SDXLConditioner

    shapes = bench.sdxl_base_shapes()
    weights = {key: torch.empty(shape, device="meta") for key, (shape, _) in shapes.items()}
    assert sum(math.prod(shape) * 2 for shape, kind in shapes.values() if kind not in ("sigmas", "positions")) > 6.9e9
    assert detect_family(weights, "x").config_name == "sd_xl_base.yaml"
    assert weights["conditioner.embedders.1.model.transformer.resblocks.31.attn.in_proj_weight"].shape == (3840, 1280)
    assert weights["model.diffusion_model.label_emb.0.0.weight"].shape == (1280, 2816)
    config = load_config(packaged_config("sd_xl_base.yaml"))
    with empty_modules():
        conditioner = SDXLConditioner.from_config(config.text_params["emb_models"], weights)
        model = DiffusionEngine(config, conditioner)
    text, _, unexpected = conditioner.module_state_dict_from_checkpoint(weights)
    module_weights = {"conditioner." + key: value for key, value in text.items()}
    module_weights.update({key: value for key, value in weights.items() if key.startswith(("model.", "first_stage_model."))})
    report = compare(model.state_dict(), module_weights, unexpected)
    report.raise_if_any("the benchmark's SDXL layout")
