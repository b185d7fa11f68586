"""depth2img: MiDaS built from the checkpoint's keys, its preprocessing, the depth conditioning, and parity.

The reference for the diffusion part is diffusers: its StableDiffusionDepth2ImgPipeline turns a
depth map into the conditioning (`prepare_depth_map`: bicubic to latent size, min-max to [-1, 1]),
and the loop is the original depth2img's (noise at DDIM index t_enc = min(int(strength · steps),
steps - 1), denoise from one index below) run with diffusers' UNet, VAE and DDIM scheduler, the
transformers text encoder of support/parity_reference.py, and x_T / forward noise = each image's first draw.
MiDaS's resize is checked against OpenCV's INTER_CUBIC (what the original uses) where cv2 is installed.
"""

import numpy as np
import pytest
import torch
from PIL import Image

diffusers = pytest.importorskip("diffusers")
from parity_reference import Generators, Reference  # noqa: E402
from tiny_midas import TINY, dpt_layer_shapes, tiny_dpt_weights, vit_hybrid  # noqa: E402
from references import smooth_image  # noqa: E402
from tiny_models import write_tiny_checkpoint  # noqa: E402

from sd_cli.pipelines.depth2img import (  # noqa: E402
    DepthOptions, DepthSource, depth2img, depth_conditioning, depth_estimator, depth_preview, estimate_depth,
    load_depth_map, midas_input, midas_size,
)
from sd_cli.errors import CheckpointError, UsageError  # noqa: E402
from sd_cli.loading.loader import load_model  # noqa: E402
from sd_cli.models.midas import build_dpt_hybrid  # noqa: E402
from sd_cli.sampling.denoising import SamplingParams  # noqa: E402

SIZE = 64
TOLERANCE = 1e-4
PROMPTS = ["a cabin interior", "a room at night"]


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest.one_thread




# ---------------------------------------------------------------- MiDaS


def test_midas_resize_rule():
    assert midas_size(512, 512) == (384, 384)
    assert midas_size(768, 512) == (576, 384)  # w512 x h768 -> w384 x h576 (docs/reference/original-scripts.md §7.5)
    assert midas_size(64, 96) == (256, 384)  # both scales > 1: the one closer to 1 (4, from the width) wins
    assert midas_size(448, 448) == (384, 384)
    assert midas_size(100, 4000) == (32, 384)  # never 0


def test_midas_input_matches_opencv_cubic():
    cv2 = pytest.importorskip("cv2")
    image = torch.rand(1, 3, 80, 112, generator=torch.Generator().manual_seed(0)) * 2 - 1
    ours = midas_input(image)
    h, w = ours.shape[-2:]
    hwc = ((image[0].permute(1, 2, 0) + 1) * 0.5).numpy().astype(np.float32)
    theirs = (cv2.resize(hwc, (w, h), interpolation=cv2.INTER_CUBIC) - 0.5) / 0.5
    assert np.abs(ours[0].permute(1, 2, 0).numpy() - theirs).max() < 5e-5  # cv2 rounds its kernel weights in float32


def test_full_size_layout_is_timms_vit_base_r50_with_the_original_dpt_names():
    """On meta tensors: the full-size key set (timm's vit_base_r50_s16_384 + MiDaS's DPT layers) builds and loads."""
    import timm

    with torch.device("meta"):
        vit = timm.create_model("vit_base_r50_s16_384", pretrained=False)
    full = dict(stem=64, layers=(3, 4, 9), channels=(256, 512, 1024), width=768, features=256)
    shapes = {"pretrained.model." + k: tuple(v.shape) for k, v in vit.state_dict().items()}
    shapes.update(dpt_layer_shapes(full))
    assert "pretrained.act_postprocess3.0.project.0.bias" in shapes  # third-party tools detect depth models by it
    built = build_dpt_hybrid({k: torch.empty(s, device="meta") for k, s in shapes.items()})
    assert {k: tuple(v.shape) for k, v in built.state_dict().items()} == shapes
    assert built.pretrained.model.blocks[0].attn.num_heads == 12 and built.taps == (8, 11)


def test_tiny_dpt_from_checkpoint_keys(depth_model):
    _, model = depth_model
    estimator = depth_estimator(model)
    assert estimator.taps == (8, 11)
    assert model.state_dict()["depth_model.model.scratch.layer1_rn.weight"].shape == (TINY["features"], 128, 3, 3)
    depth = estimate_depth(model, smooth_image(SIZE))
    assert depth.shape == (1, 1, 384, 384) and depth.min() >= 0 and depth.std() > 1e-3


def test_dpt_forward_matches_timm_blocks_with_hooks():
    """The DPT's encoder taps: stage 1-2 outputs and blocks 8 and 11 of timm's own forward (via hooks)."""
    weights = tiny_dpt_weights(5)
    built = build_dpt_hybrid(weights)
    built.load_state_dict(weights, assign=True)
    reference = vit_hybrid(TINY).eval()
    reference.load_state_dict({k[len("pretrained.model."):]: v for k, v in weights.items()
                               if k.startswith("pretrained.model.")})
    seen = {}
    for name, module in [("s0", reference.patch_embed.backbone.stages[0]), ("s1", reference.patch_embed.backbone.stages[1]),
                         ("b8", reference.blocks[8]), ("b11", reference.blocks[11])]:
        module.register_forward_hook(lambda m, i, o, name=name: seen.__setitem__(name, o))
    x = torch.randn(1, 3, 384, 384, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference.forward_features(x)  # 384 x 384: the position grid needs no resize
        layers = built.eval()._encode(x)
    assert torch.allclose(layers[0], seen["s0"], atol=1e-5) and torch.allclose(layers[1], seen["s1"], atol=1e-5)
    post3 = built.pretrained.act_postprocess3
    tokens = post3[0](seen["b8"]).transpose(1, 2).unflatten(2, (24, 24))
    assert torch.allclose(layers[2], post3[3](tokens), atol=1e-5)


def to_transformers_dpt(weights: dict) -> dict:
    """MiDaS keys (below depth_model.model.) -> transformers' DPTForDepthEstimation (hybrid) keys."""
    import re

    renames = [  # (pattern, replacement), applied in order
        (r"^pretrained\.model\.cls_token$", "dpt.embeddings.cls_token"),
        (r"^pretrained\.model\.pos_embed$", "dpt.embeddings.position_embeddings"),
        (r"^pretrained\.model\.patch_embed\.proj\.", "dpt.embeddings.projection."),
        (r"^pretrained\.model\.patch_embed\.backbone\.stem\.conv\.", "dpt.embeddings.backbone.bit.embedder.convolution."),
        (r"^pretrained\.model\.patch_embed\.backbone\.stem\.norm\.", "dpt.embeddings.backbone.bit.embedder.norm."),
        (r"^pretrained\.model\.patch_embed\.backbone\.stages\.(\d+)\.blocks\.", r"dpt.embeddings.backbone.bit.encoder.stages.\1.layers."),
        (r"^pretrained\.model\.blocks\.(\d+)\.norm1\.", r"dpt.encoder.layer.\1.layernorm_before."),
        (r"^pretrained\.model\.blocks\.(\d+)\.norm2\.", r"dpt.encoder.layer.\1.layernorm_after."),
        (r"^pretrained\.model\.blocks\.(\d+)\.attn\.proj\.", r"dpt.encoder.layer.\1.attention.output.dense."),
        (r"^pretrained\.model\.blocks\.(\d+)\.mlp\.fc1\.", r"dpt.encoder.layer.\1.intermediate.dense."),
        (r"^pretrained\.model\.blocks\.(\d+)\.mlp\.fc2\.", r"dpt.encoder.layer.\1.output.dense."),
        (r"^pretrained\.model\.norm\.", "dpt.layernorm."),
        (r"^pretrained\.act_postprocess3\.0\.project\.0\.", "neck.reassemble_stage.readout_projects.2.0."),
        (r"^pretrained\.act_postprocess4\.0\.project\.0\.", "neck.reassemble_stage.readout_projects.3.0."),
        (r"^pretrained\.act_postprocess3\.3\.", "neck.reassemble_stage.layers.2.projection."),
        (r"^pretrained\.act_postprocess4\.3\.", "neck.reassemble_stage.layers.3.projection."),
        (r"^pretrained\.act_postprocess4\.4\.", "neck.reassemble_stage.layers.3.resize."),
        (r"^scratch\.output_conv\.", "head.head."),
        (r"resConfUnit(\d)\.conv(\d)\.", r"residual_layer\1.convolution\2."),
        (r"out_conv\.", "projection."),
    ]
    converted = {}
    for key, value in weights.items():
        if key.startswith("pretrained.model.head."):
            continue  # ImageNet head: unused by MiDaS, absent from transformers
        qkv = re.match(r"^pretrained\.model\.blocks\.(\d+)\.attn\.qkv\.(weight|bias)$", key)
        if qkv:
            for name, part in zip(("query", "key", "value"), value.chunk(3)):
                converted[f"dpt.encoder.layer.{qkv[1]}.attention.attention.{name}.{qkv[2]}"] = part
            continue
        layer_rn = re.match(r"^scratch\.layer(\d)_rn\.", key)
        if layer_rn:
            key = f"neck.convs.{int(layer_rn[1]) - 1}." + key[layer_rn.end():]
        refine = re.match(r"^scratch\.refinenet(\d)\.", key)
        if refine:  # transformers fuses from the deepest level: refinenet4 is its layer 0
            key = f"neck.fusion_stage.layers.{4 - int(refine[1])}." + key[refine.end():]
        for pattern, replacement in renames:
            key = re.sub(pattern, replacement, key)
        converted[key] = value
    return converted


def test_dpt_matches_transformers_dpt_hybrid():
    """An independent DPT-Hybrid (transformers: BiT backbone, its own ViT, neck and head) on the same weights."""
    from transformers import BitConfig, DPTConfig, DPTForDepthEstimation

    weights = tiny_dpt_weights(7)
    bit = BitConfig(global_padding="same", layer_type="bottleneck", depths=list(TINY["layers"]),
                    hidden_sizes=list(TINY["channels"]), embedding_size=TINY["stem"],
                    out_features=["stage1", "stage2", "stage3"], embedding_dynamic_padding=True)
    width, grid = TINY["width"], TINY["grid"]
    config = DPTConfig(is_hybrid=True, backbone_config=bit, hidden_size=width, num_hidden_layers=TINY["depth"],
                       num_attention_heads=width // 64, intermediate_size=4 * width, image_size=16 * grid, patch_size=16,
                       layer_norm_eps=1e-6, backbone_out_indices=[2, 5, 8, 11], readout_type="project",
                       neck_hidden_sizes=[TINY["channels"][0], TINY["channels"][1], width, width],
                       fusion_hidden_size=TINY["features"], reassemble_factors=[1, 1, 1, 0.5],
                       backbone_featmap_shape=[1, TINY["channels"][2], grid, grid], neck_ignore_stages=[0, 1])
    reference = DPTForDepthEstimation(config).eval()
    reference.load_state_dict(to_transformers_dpt(weights), strict=True)
    ours = build_dpt_hybrid(weights)
    ours.load_state_dict(weights, assign=True)
    x = torch.randn(2, 3, 384, 384, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        theirs, mine = reference(pixel_values=x).predicted_depth, ours.eval()(x)
    assert mine.shape == theirs.shape == (2, 384, 384) and mine.std() > 1e-2
    diff = (mine - theirs).abs().max().item()
    print(f"max abs diff {diff:.2e}")
    assert diff < 1e-4
    # other sizes: transformers' hybrid reassembly is square-only; its position-embedding resize is checked alone
    from sd_cli.models.midas import _resized_position_embedding

    pos = weights["pretrained.model.pos_embed"]
    expected = reference.dpt.embeddings._resize_pos_embed(pos, 16, 24)
    assert torch.allclose(_resized_position_embedding(pos, (16, 24)), expected, atol=1e-6)


def test_wrong_midas_weights_are_named(depth_model, tmp_path):
    from safetensors.torch import save_file

    _, model = depth_model
    weights = tiny_dpt_weights(1)
    del weights["scratch.refinenet2.out_conv.bias"]
    bad = tmp_path / "dpt.safetensors"
    save_file({k: v.contiguous() for k, v in weights.items()}, str(bad))
    holder = model.__dict__["_modules"].pop("depth_model", None)
    try:
        with pytest.raises(CheckpointError, match="1 missing: scratch.refinenet2.out_conv.bias"):
            depth_estimator(model, bad)
    finally:
        if holder is not None:
            model.depth_model = holder


# ---------------------------------------------------------------- conditioning


def test_conditioning_matches_diffusers_prepare_depth_map():
    pipe = diffusers.StableDiffusionDepth2ImgPipeline.__new__(diffusers.StableDiffusionDepth2ImgPipeline)
    pipe.vae_scale_factor = 8
    depth = torch.rand(2, 48, 80, generator=torch.Generator().manual_seed(2)) * 3
    theirs = pipe.prepare_depth_map(torch.zeros(2, 3, 64, 128), depth, 2, False, torch.float32, torch.device("cpu"))
    ours = depth_conditioning(depth.unsqueeze(1), (8, 16))
    assert ours.shape == (2, 1, 8, 16) and (ours - theirs).abs().max() < 1e-6
    assert ours.amin(dim=(1, 2, 3)).eq(-1).all() and ours.amax(dim=(1, 2, 3)).eq(1).all()


def test_constant_depth_gives_no_nan(capsys):
    flat = depth_conditioning(torch.full((1, 1, 32, 32), 0.7), (4, 4))
    assert torch.isfinite(flat).all() and flat.eq(-1).all()
    assert "depth map is constant" in capsys.readouterr().err


def test_depth_map_files(tmp_path):
    ramp = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (16, 1))
    Image.fromarray(ramp).save(tmp_path / "d8.png")
    d8 = load_depth_map(tmp_path / "d8.png")
    assert d8.shape == (1, 1, 16, 64) and d8.max() == 252 / 255
    Image.fromarray((ramp.astype(np.uint16) * 257)).save(tmp_path / "d16.png")
    assert torch.allclose(load_depth_map(tmp_path / "d16.png"), d8, atol=1e-6)
    assert np.array_equal(depth_preview(d8)[0], ((np.arange(64) / 63) * 255).astype(np.uint8))


def test_depth_source_uses_given_map_and_saves_it(depth_model, tmp_path):
    _, model = depth_model
    Image.fromarray(np.tile(np.arange(64, dtype=np.uint8) * 4, (64, 1))).save(tmp_path / "given.png")
    source = DepthSource(DepthOptions(depth_map=tmp_path / "given.png", save_depth=tmp_path / "out" / "d.png"))
    depth = source.for_image(model, "a", smooth_image(SIZE))
    assert torch.equal(depth, load_depth_map(tmp_path / "given.png"))
    saved = np.asarray(Image.open(tmp_path / "out" / "d.png"))
    assert saved.shape == (64, 64) and np.array_equal(saved, depth_preview(depth))  # given map is 64x64 too
    source.for_image(model, "b", smooth_image(SIZE))
    assert (tmp_path / "out" / "d-1.png").exists()


# ---------------------------------------------------------------- the whole run


@torch.no_grad()
def reference_depth2img(ref: Reference, image, depth, prompts, seeds, params: SamplingParams, strength):
    pipe = diffusers.StableDiffusionDepth2ImgPipeline.__new__(diffusers.StableDiffusionDepth2ImgPipeline)
    pipe.vae_scale_factor = 8
    batch = len(prompts)
    concat = pipe.prepare_depth_map(image, depth[:, 0], batch, False, torch.float32, torch.device("cpu"))
    cond, uncond = ref.encode_text(prompts), ref.encode_text([""] * batch)
    x0 = ref.encode_image(image).expand(batch, -1, -1, -1)
    first = Generators(seeds).draw()
    sched = ref.ddim_scheduler()
    sched.set_timesteps(params.steps)
    t_enc = min(int(strength * params.steps), params.steps - 1)
    if strength == 1.0:
        x = first
    else:
        a = sched.alphas_cumprod[sched.timesteps.flip(0)[t_enc]]
        x = a.sqrt() * x0 + (1 - a).sqrt() * first
    for t in sched.timesteps[len(sched.timesteps) - t_enc:]:
        out = ref.guided(torch.cat([x, concat], dim=1), t, cond, uncond, params.scale)
        x = sched.step(out, t, x).prev_sample
    return ref.decode(x)


@pytest.mark.parametrize("strength", [0.5, 1.0])
def test_depth2img_matches_reference(depth_model, strength):
    path, model = depth_model
    ref = Reference(path, path.with_suffix(".yaml"))
    depth = estimate_depth(model, smooth_image(SIZE))
    params = SamplingParams(sampler="ddim", steps=10, scale=5.0)
    ours = depth2img(model, smooth_image(SIZE), depth, PROMPTS, [""] * 2, [4, 5], params, strength)
    theirs = reference_depth2img(ref, smooth_image(SIZE), depth, PROMPTS, [4, 5], params, strength)
    assert torch.isfinite(ours).all() and ours[0].std() > 1e-2
    diff = (ours - theirs).abs().max().item()
    print(f"max abs diff {diff:.2e}")
    assert diff < TOLERANCE


def test_depth_changes_the_image(depth_model):
    _, model = depth_model
    params = SamplingParams(sampler="ddim", steps=4, scale=5.0)
    ramp = torch.linspace(0, 1, 64).expand(1, 1, 64, 64)
    a = depth2img(model, smooth_image(SIZE), ramp, PROMPTS[:1], [""], [1], params, 1.0)
    b = depth2img(model, smooth_image(SIZE), ramp.transpose(-1, -2), PROMPTS[:1], [""], [1], params, 1.0)
    assert (a - b).abs().max() > 1e-3


def test_other_models_are_refused(tmp_path):
    from sd_cli.pipelines.depth2img import check_depth_model

    model = load_model(write_tiny_checkpoint("sd2-inpaint", tmp_path, fmt="safetensors")).model
    with pytest.raises(UsageError, match="use inpaint for it"):
        check_depth_model(model)


def test_timm_is_imported_only_for_midas(sd1_ckpt, tmp_path):
    """txt2img (help and a run) and loading a depth checkpoint never import timm; estimating depth does."""
    import subprocess
    import sys
    from pathlib import Path

    depth_ckpt = write_tiny_checkpoint("sd2-depth", tmp_path, fmt="safetensors")
    probe = (
        "import sys, io, contextlib, torch\ntorch.set_num_threads(1)\nfrom sd_cli.cli.app import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    for args in (['txt2img', '--help'], ['txt2img', 'x', '--ckpt', sys.argv[1], '--steps', '1', '--seed', '1',\n"
        "                 '-o', sys.argv[3]]):\n"
        "        try: main(args)\n"
        "        except SystemExit as e: assert not e.code, e.code\n"
        "from sd_cli.loading.loader import load_model\nmodel = load_model(sys.argv[2]).model\n"
        "before = 'timm' in sys.modules\nfrom sd_cli.pipelines.depth2img import estimate_depth\n"
        "estimate_depth(model, torch.zeros(1, 3, 64, 64))\nprint(before, 'timm' in sys.modules)\n")
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", probe, str(sd1_ckpt), str(depth_ckpt), str(tmp_path / "t.png")],
                         cwd=root, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "False True"


# ---------------------------------------------------------------- the command line

FAST = ["--steps", "2", "--seed", "3"]


@pytest.fixture(scope="module")
def cli_files(tmp_path_factory):
    """A tiny depth checkpoint with MiDaS, one without (and the MiDaS weights as their own file), a photo."""
    from safetensors.torch import load_file, save_file

    folder = tmp_path_factory.mktemp("depth-cli")
    with_midas = write_tiny_checkpoint("sd2-depth", folder, fmt="safetensors")
    weights = load_file(str(with_midas))
    prefix = "depth_model.model."
    save_file({k: v for k, v in weights.items() if not k.startswith(prefix)}, str(folder / "no-midas.safetensors"))
    (folder / "no-midas.yaml").write_text(with_midas.with_suffix(".yaml").read_text())
    save_file({k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}, str(folder / "dpt.safetensors"))
    photo = folder / "room.png"
    Image.fromarray(np.random.default_rng(5).integers(0, 255, (80, 70, 3), dtype=np.uint8)).save(photo)
    return with_midas, folder / "no-midas.safetensors", folder / "dpt.safetensors", photo


def test_cli_depth2img_with_the_checkpoints_midas(run_cli, cli_files, tmp_path):
    from sd_cli.files.infotext import parse_infotext

    ckpt, _, _, photo = cli_files
    out, depth = tmp_path / "d.png", tmp_path / "depth.png"
    result = run_cli("depth2img", "a cabin", "--ckpt", ckpt, "--init-img", photo, *FAST, "--save-depth", depth, "-o", out)
    assert result.code == 0, result.stderr
    assert "MiDaS DPT-Hybrid from the checkpoint's depth_model.model.*" in result.stderr
    assert Image.open(out).size == (64, 64)  # floored to multiples of 64, as img2img
    assert Image.open(depth).size == (64, 64) and Image.open(depth).mode == "L"
    assert parse_infotext(Image.open(out).text["parameters"])[2]["Denoising strength"] == "0.9"
    # the saved map fed back as --depth-map gives (nearly) the same conditioning, hence image
    again = tmp_path / "again.png"
    assert run_cli("depth2img", "a cabin", "--ckpt", ckpt, "--init-img", photo, *FAST, "--depth-map", depth,
                   "-o", again).code == 0
    flipped = tmp_path / "flipped.png"
    Image.fromarray(np.asarray(Image.open(depth))[:, ::-1]).save(tmp_path / "flip-depth.png")
    assert run_cli("depth2img", "a cabin", "--ckpt", ckpt, "--init-img", photo, *FAST, "--depth-map",
                   tmp_path / "flip-depth.png", "-o", flipped).code == 0
    a, b, c = (np.asarray(Image.open(p)).astype(int) for p in (out, again, flipped))
    assert np.abs(a - b).mean() < np.abs(a - c).mean()


def test_cli_depth2img_without_midas_weights(run_cli, cli_files, tmp_path):
    _, bare, dpt, photo = cli_files
    result = run_cli("depth2img", "x", "--ckpt", bare, "--init-img", photo, *FAST, "-o", tmp_path / "x.png")
    assert result.code == 2 and "pass --depth-model" in result.stderr
    result = run_cli("depth2img", "x", "--ckpt", bare, "--init-img", photo, *FAST, "--depth-model", dpt,
                     "-o", tmp_path / "y.png")
    assert result.code == 0, result.stderr
    result = run_cli("depth2img", "x", "--ckpt", bare, "--init-img", photo, "--depth-model", dpt, "--depth-map", dpt)
    assert result.code == 2 and "give one of them" in result.stderr


def test_original_depth2img_command_line(cli_files, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    from sd_cli.files.infotext import parse_infotext

    ckpt, _, _, photo = cli_files
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run([sys.executable, str(root / "scripts" / "depth2img.py"), "--prompt", "a cabin interior",
                             "--init-img", str(photo), "--ckpt", str(ckpt), "--ddim_steps", "2", "--strength", "0.8"],
                            cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    written = sorted((tmp_path / "outputs" / "depth2img-samples" / "samples").glob("*.png"))
    assert len(written) == 1
    fields = parse_infotext(Image.open(written[0]).text["parameters"])[2]
    assert fields["Seed"] == "0" and fields["CFG scale"] == "9.0" and fields["Denoising strength"] == "0.8"
