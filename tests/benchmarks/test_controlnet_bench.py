"""The ControlNet benchmark's own file writer and arithmetic: its file is control_v11p_sd15_canny's layout,
which sd_cli loads as a v1.1 control-only file and diffusers converts key for key; the rounds alternate
and the ratio is sd_cli over diffusers. No timings are asserted."""

import math

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file
from tiny_controlnet import tiny_control_config
from tiny_models import write_tiny_checkpoint

from benchmarks import controlnet as bench
from benchmarks import peers


def test_the_full_size_layout_is_v11_canny_and_diffusers_converts_every_key():
    from diffusers import ControlNetModel
    from diffusers.loaders.single_file_utils import convert_controlnet_checkpoint

    from sd_cli.loading import controlnet_keys
    from sd_cli.loading.packaged import packaged_config

    shapes = bench.controlnet_shapes(packaged_config("cldm_v15.yaml"))
    weights = {key: torch.empty(shape, device="meta") for key, (shape, _) in shapes.items()}
    assert len(shapes) == 340 and all(key.startswith("control_model.") for key in shapes)
    assert sum(math.prod(shape) * 2 for shape, _ in shapes.values()) == pytest.approx(0.7226e9, rel=1e-3)
    assert shapes["control_model.input_hint_block.0.weight"] == ((16, 3, 3, 3), "weight")
    assert shapes["control_model.zero_convs.11.0.weight"] == ((1280, 1280, 1, 1), "weight")  # random, not zero
    assert shapes["control_model.middle_block_out.0.bias"] == ((1280,), "zeros")
    assert controlnet_keys.layout(weights) == "original"
    # diffusers' own conversion of the original names fills its ControlNetModel exactly
    original = OmegaConf.to_container(OmegaConf.load(packaged_config("cldm_v15.yaml")))
    config = bench.diffusers_controlnet_config(original, weights)
    converted = convert_controlnet_checkpoint(weights, config)
    with torch.device("meta"):
        theirs = ControlNetModel.from_config(config).state_dict()
    assert {k: tuple(v.shape) for k, v in converted.items()} == {k: tuple(v.shape) for k, v in theirs.items()}


def test_a_tiny_file_from_the_same_writer_loads_as_a_v11_control_only_file(tmp_path):
    from benchmarks.sdxl import write_random_safetensors
    from sd_cli.loading.controlnet_file import load_controlnet
    from sd_cli.loading.loader import load_model

    yaml = tmp_path / "tiny-cldm.yaml"
    OmegaConf.save(OmegaConf.create(tiny_control_config()), yaml)
    path = tmp_path / "control_v11p_sd15_canny.safetensors"
    write_random_safetensors(path, bench.controlnet_shapes(yaml))
    stored = load_file(str(path))
    zero_conv = stored["control_model.zero_convs.0.0.weight"]
    assert zero_conv.dtype == torch.float16 and (zero_conv != 0).float().mean() > 0.99  # random, not zero
    base = load_model(write_tiny_checkpoint("sd1", tmp_path, fmt="safetensors")).model
    loaded = load_controlnet(path, yaml, base)
    assert loaded.name == "control_v11p_sd15_canny"
    net_weights = loaded.net.state_dict()
    assert set(net_weights) == {key.removeprefix("control_model.") for key in stored}
    assert torch.equal(net_weights["zero_convs.0.0.weight"], zero_conv.float())


def _fake_files(monkeypatch, tmp_path):
    for name in ("fp16_checkpoint", "controlnet_checkpoint", "hint_image"):
        monkeypatch.setattr(bench, name, lambda name=name: tmp_path / name)
    (tmp_path / "controlnet_checkpoint").write_bytes(b"x" * 1000)
    monkeypatch.setattr(bench, "diffusers_config_dir", lambda base: tmp_path)
    monkeypatch.setattr(bench, "controlnet_config_dir", lambda net: tmp_path)
    monkeypatch.setattr(bench, "_sd_cli_command", lambda *files: lambda steps: ["sd_cli"])
    monkeypatch.setattr(bench, "_diffusers_command", lambda *files: lambda steps: ["diffusers"])


def test_rounds_alternate_and_the_ratio_is_sd_cli_over_diffusers(monkeypatch, tmp_path):
    started = []
    fake = {"sd_cli": {2: dict(wall=20.0, load=5.0, peak_rss=3e9), 8: dict(wall=38.0, load=5.0, peak_rss=3.2e9)},
            "diffusers": {2: dict(wall=30.0, load=10.0, peak_rss=5e9), 8: dict(wall=54.0, load=10.0, peak_rss=5.5e9)}}

    def one_round(command):
        started.append(command(2)[0])
        return fake[command(2)[0]]

    _fake_files(monkeypatch, tmp_path)
    monkeypatch.setattr(peers, "_one_round", one_round)
    saved = []
    result = bench.bench_controlnet(2, saved.append)
    assert started == ["sd_cli", "diffusers", "sd_cli", "diffusers"] and len(saved) == 4
    assert result["tools"]["sd_cli"]["s_per_step"] == 3.0  # (38 - 5 - (20 - 5)) / 6
    assert result["tools"]["diffusers"]["s_per_step"] == 4.0  # (54 - 10 - (30 - 10)) / 6
    assert result["ratio"] == {"s_per_step": 0.75, "load_to_ready_s": 0.5,
                               "image_20_steps_whole_process_s": round((38 + 12 * 3) / (54 + 12 * 4), 3),
                               "peak_rss_gb": round(3.2 / 5.5, 3)}
    assert result["failed"] == {} and result["controlnet_file_gb"] == 0.0 and result["rounds"] == 2


def test_a_failed_side_is_reported_and_no_ratio_is_made(monkeypatch, tmp_path):
    def one_round(command):
        if command(2)[0] == "diffusers":
            raise RuntimeError("benchmark child failed: out of memory")
        return {2: dict(wall=20.0, load=5.0, peak_rss=3e9), 8: dict(wall=38.0, load=5.0, peak_rss=3.2e9)}

    _fake_files(monkeypatch, tmp_path)
    monkeypatch.setattr(peers, "_one_round", one_round)
    result = bench.bench_controlnet(2, lambda result: None)
    assert result["failed"] == {"diffusers": "benchmark child failed: out of memory"}
    assert set(result["tools"]) == {"sd_cli"} and result["ratio"] is None
    assert len(result["tools"]["sd_cli"]["runs"]) == 2  # the other side kept running its rounds


def test_only_controlnet_runs_it_alone_with_the_rounds_and_writes_its_json(monkeypatch, tmp_path):
    import json

    from benchmarks import compare

    asked = []

    def fake_bench(rounds, save):
        asked.append(rounds)
        save({"partial": True})  # what a run cut off keeps
        return {"ratio": {"s_per_step": 0.7}}

    def no_other_files():
        raise AssertionError("the SD 1.5 .ckpt pair is not needed for the ControlNet figure")

    monkeypatch.setattr(bench, "bench_controlnet", fake_bench)
    monkeypatch.setattr(compare, "full_size_checkpoints", no_other_files)
    monkeypatch.setattr(compare, "BENCH_DIR", tmp_path)
    out = tmp_path / "figures.json"
    compare.main(["--only", "controlnet", "--rounds", "2", "--json-out", str(out)])
    assert asked == [2] and json.loads(out.read_text()) == {"controlnet": {"ratio": {"s_per_step": 0.7}}}
