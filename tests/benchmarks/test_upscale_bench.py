"""The x4 upscaler benchmark's own file writer and arithmetic: its file is x4-upscaler-ema.ckpt's layout,
detected and loaded as the upscaler; the children's lines are read right and the 75-step total is the
projection it says it is. No timings are asserted."""

import math

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file
from tiny_models import TEXT_WIDTH, tiny_config

from benchmarks import upscale as bench


def test_the_full_size_layout_is_detected_as_the_x4_upscaler_and_matches_its_model_strictly():
    from sd_cli.loading.config import load_config
    from sd_cli.loading.detection import detect_family
    from sd_cli.loading.loader import _module_state_dict
    from sd_cli.loading.packaged import packaged_config
    from sd_cli.loading.strict import compare
    from sd_cli.models.empty import empty_modules
    from sd_cli.models.latent_diffusion import LatentDiffusion, text_encoder_class

    shapes = bench.x4_shapes(packaged_config("x4-upscaling.yaml"))
    weights = {key: torch.empty(shape, device="meta") for key, (shape, _) in shapes.items()}
    assert detect_family(weights, "x").config_name == "x4-upscaling.yaml"
    assert weights["model.diffusion_model.input_blocks.0.0.weight"].shape == (256, 7, 3, 3)  # latent + low-res
    assert weights["model.diffusion_model.label_emb.weight"].shape == (1000, 1024)
    assert weights["first_stage_model.decoder.conv_out.weight"].shape == (3, 128, 3, 3)
    assert weights["cond_stage_model.model.transformer.resblocks.23.attn.in_proj_weight"].shape == (3072, 1024)
    assert len([key for key in shapes if key.startswith("low_scale_model.")]) == 8
    fp16_bytes = sum(math.prod(shape) * 2 for shape, kind in shapes.values() if isinstance(kind, str))
    assert fp16_bytes == pytest.approx(1.7655e9, rel=1e-4)  # x4-upscaler-ema.ckpt: 3.53 GB in fp32
    config = load_config(packaged_config("x4-upscaling.yaml"))
    encoder_class = text_encoder_class(config.text_encoder)
    with empty_modules():
        model = LatentDiffusion(config, encoder_class.from_checkpoint(weights, **config.text_params))
    module_weights, unexpected = _module_state_dict(weights, encoder_class, depth=False, upscaler=True)
    compare(model.state_dict(), module_weights, unexpected).raise_if_any("the benchmark's x4 layout")


def test_the_schedules_are_the_yamls_own():
    buffers = bench.schedule_buffers(0.0001, 0.02, 1000)
    betas = torch.linspace(0.0001 ** 0.5, 0.02 ** 0.5, 1000, dtype=torch.float64) ** 2
    assert torch.allclose(buffers["alphas_cumprod"].double(), torch.cumprod(1 - betas, 0), rtol=1e-6)
    assert buffers["posterior_variance"][0] == 0 and buffers["alphas_cumprod_prev"][0] == 1
    assert torch.allclose(buffers["sqrt_recipm1_alphas_cumprod"] ** 2, 1 / buffers["alphas_cumprod"] - 1, rtol=1e-4)


def test_a_tiny_file_from_the_same_writer_loads_as_the_upscaler(tmp_path):
    from benchmarks.sdxl import write_random_safetensors
    from sd_cli.loading.loader import load_model

    yaml = tmp_path / "tiny-x4.yaml"
    OmegaConf.save(OmegaConf.create(tiny_config("sd2-x4")), yaml)
    text = dict(vocab_size=49408, context_length=77, width=TEXT_WIDTH, layers=3, mlp_width=4 * TEXT_WIDTH)
    path = tmp_path / "x4.safetensors"
    write_random_safetensors(path, bench.x4_shapes(yaml, text))
    stored = load_file(str(path))
    assert stored["low_scale_model.alphas_cumprod"].dtype == torch.float32
    assert stored["model.diffusion_model.input_blocks.0.0.weight"].dtype == torch.float16
    model = load_model(path, yaml).model
    assert model.family.name == "sd2-x4-upscaler" and model.family.vae_downsampling == 4
    assert torch.equal(model.alphas_cumprod, stored["alphas_cumprod"])  # the file's schedule, used as stored
    assert torch.equal(model.model.diffusion_model.input_blocks[0][0].weight,
                       stored["model.diffusion_model.input_blocks.0.0.weight"].float())


def test_a_childs_lines_become_its_figures_and_the_75_step_projection():
    report = '{"text": 0.5, "decode": 30.0, "steps": [12.0, 8.0, 10.0], "peak_rss": 9e9}'
    stdout = f"noise\nREADY 105.0\nDONE {report}\n"
    measured = bench.parse_child(stdout, "", 0, 100.0, 160.0)
    assert measured["wall"] == 60.0 and measured["load"] == 5.0
    figures = bench.summary(measured, 3)
    assert figures["s_per_step"] == 9.0 and figures["first_step_s"] == 12.0 and figures["decode_s"] == 30.0
    assert figures["load_s"] == 5.0 and figures["whole_process_s"] == 60.0 and figures["peak_rss_gb"] == 9.0
    assert figures["projected_75_steps_total_s"] == 5.0 + 12.0 + 74 * 9.0 + 30.0
    assert figures["projection"].startswith("computed, not measured")


def test_a_refused_or_failed_child_is_reported_as_such():
    refused = bench.parse_child("READY 101.5\nREFUSED 2048x2048 at batch 1 needs at least 30 GB\n", "", 0, 100.0, 102.0)
    assert refused == {"refused": "2048x2048 at batch 1 needs at least 30 GB", "load_s": 1.5}
    assert bench.summary(refused, 3) is refused
    failed = bench.parse_child("READY 101.0\n", "Killed", -9, 100.0, 200.0)
    assert failed == {"failed": "exit -9: Killed"}


def test_the_command_line_refuses_one_step_and_unknown_configurations(capsys):
    with pytest.raises(SystemExit):
        bench.main(["--steps", "1"])
    assert "--steps must be at least 2" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench.main(["--only", "whole,tiles"])
    assert "unknown configuration tiles" in capsys.readouterr().err
