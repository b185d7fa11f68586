"""SDXL with what sd_cli does for SD 1.x/2.x: emphasis and long prompts through both towers, textual
inversion with clip_l / clip_g vectors, LoRA in kohya's SDXL naming, --vae, and the run machinery.

Each reference is computed here, independently of sd_cli: AUTOMATIC1111's chunking and emphasis
written out on transformers' towers (sdxl_reference.py), LoRA merged by hand into diffusers' UNet and
transformers' towers, and diffusers' AutoencoderKL for the VAE.
"""

import pytest
import torch
from sdxl_reference import EOT, emb_models, hf_tower
from tiny_models import tiny_state_dict, write_tiny_checkpoint

from sd_cli.loading.loader import load_model
from sd_cli.prompting.prompts import TextOptions

pytestmark = pytest.mark.slow
diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

SOT = 49406
# 30 words of one token each, three times: 90 tokens, two chunks; no comma, so no backtracking
LONG = " ".join(["red circle blue square green triangle"] * 15)


@pytest.fixture(scope="module")
def sdxl(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sdxl-extras")
    path = write_tiny_checkpoint("sdxl", folder / "sdxl", fmt="safetensors")
    weights, config = tiny_state_dict("sdxl")
    return path, weights, config


# -- the reference: AUTOMATIC1111's chunks and emphasis on transformers' towers -----------------------

def hf_ids(text: str) -> list[int]:
    from references import hf_clip_tokenizer

    return hf_clip_tokenizer()(text, add_special_tokens=False)["input_ids"]


def reference_chunks(pieces):
    """[(ids [77], weights [77])]: the pieces' tokens in chunks of 75 between SOT and EOT; a piece is
    text, or a list of token ids (an embedding's added tokens)."""
    ids, weights = [], []
    for text, weight in pieces:
        tokens = text if isinstance(text, list) else hf_ids(text)
        ids += tokens
        weights += [weight] * len(tokens)
    chunks = []
    for start in range(0, max(len(ids), 1), 75):
        part, part_weights = ids[start:start + 75], weights[start:start + 75]
        room = 75 - len(part)
        chunks.append(([SOT] + part + [EOT] * (room + 1), [1.0] + part_weights + [1.0] * (room + 1)))
    return chunks


def with_added_tokens(model, vectors):
    """The tower with `vectors` as new tokens 49408, 49409, ... (as diffusers' load_textual_inversion adds
    them), pooling at the first end token (transformers pools at the largest id otherwise)."""
    model.resize_token_embeddings(49408 + len(vectors))
    model.get_input_embeddings().weight.data[49408:] = vectors
    for module in model.modules():
        if hasattr(module, "eos_token_id"):
            module.eos_token_id = EOT
    return model


@torch.no_grad()
def reference_text(weights, config, pieces, added=None):
    """(crossattn [1, 77·chunks, 64 + 128], pooled [1, 96]) as AUTOMATIC1111 computes them for SDXL;
    added: {"clip_l": [N, 64], "clip_g": [N, 128]}, an embedding's vectors as tokens 49408.. of each tower."""
    towers = []
    pooled = None
    for index, entry in enumerate(emb_models(config)):
        if entry["input_key"] != "txt":
            continue
        model, is_g = hf_tower(weights, index, entry["target"]), entry["target"].endswith("Embedder2")
        if added is not None:
            model = with_added_tokens(model, added["clip_g" if is_g else "clip_l"])
        hidden = []
        for number, (ids, chunk_weights) in enumerate(reference_chunks(pieces)):
            tokens = torch.tensor([ids])
            if is_g:  # open_clip pads with 0 after the end token
                tokens[0, ids.index(EOT) + 1:] = 0
            out = model(input_ids=tokens, output_hidden_states=True)
            z = out.hidden_states[-2] if is_g else out.hidden_states[entry["params"]["layer_idx"]]
            if is_g and number == 0:
                pooled = out.text_embeds
            w = torch.tensor(chunk_weights)[None, :, None]
            weighted = z * w
            hidden.append(weighted * (z.mean() / weighted.mean()))
        towers.append(torch.cat(hidden, dim=1))
    return torch.cat(towers, dim=2), pooled


def assert_close(ours, theirs, tolerance=1e-5):
    assert ours.shape == theirs.shape, (ours.shape, theirs.shape)
    assert theirs.abs().max() > 0.1
    assert (ours - theirs).abs().max().item() <= tolerance * theirs.abs().max().item()


# -- 1. prompts ------------------------------------------------------------------------------------

@pytest.mark.parametrize("prompt, pieces", ids=["emphasis", "long"], argvalues=[
    ("a (red:1.5) circle on [blue] paper", [("a ", 1.0), ("red", 1.5), (" circle on ", 1.0), ("blue", 1 / 1.1),
                                            (" paper", 1.0)]),
    (LONG + " (green:1.3)", [(LONG + " ", 1.0), ("green", 1.3)]),
])
def test_emphasis_and_long_prompts_through_both_towers(sdxl, prompt, pieces):
    path, weights, config = sdxl
    model = load_model(path).model
    with torch.no_grad():
        ours = model.encode_text([prompt], TextOptions())
    crossattn, pooled = reference_text(weights, config, pieces)
    assert crossattn.shape[1] == 77 * len(reference_chunks(pieces))
    assert_close(ours.crossattn, crossattn)
    assert_close(ours.pooled, pooled)


def test_a_long_negative_prompt_is_chunked_and_the_prompt_padded(sdxl):
    """A two-chunk negative against a one-chunk prompt: the prompt gets the empty prompt's chunk."""
    from sd_cli.pipelines.conditioning import guided_model

    path, weights, config = sdxl
    model = load_model(path).model
    with torch.no_grad():
        guided = guided_model(model, ["a (red:1.5) circle"], [LONG], 5.0, (128, 128))
    negative, negative_pooled = reference_text(weights, config, [(LONG, 1.0)])
    prompt, prompt_pooled = reference_text(weights, config, [("a ", 1.0), ("red", 1.5), (" circle", 1.0)])
    empty, _ = reference_text(weights, config, [("", 1.0)])
    assert_close(guided.uncond, negative)
    assert_close(guided.cond, torch.cat([prompt, empty], dim=1))
    assert_close(guided.uncond_vector[:, :96], negative_pooled)
    assert_close(guided.vector[:, :96], prompt_pooled)


# -- 2. textual inversion ----------------------------------------------------------------------------

def write_sdxl_embedding(folder, count=2):
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(11)
    vectors = {"clip_l": torch.randn(count, 64, generator=g), "clip_g": torch.randn(count, 128, generator=g)}
    save_file(vectors, str(folder / "xlstyle.safetensors"))
    return vectors


def test_an_sdxl_embedding_gives_each_tower_its_own_vectors(sdxl, tmp_path):
    """Its clip_l vectors in CLIP-L, its clip_g ones in bigG, the pooled vector included."""
    from sd_cli.prompting.prompts import text_options

    path, weights, config = sdxl
    model = load_model(path).model
    vectors = write_sdxl_embedding(tmp_path / "emb")
    options = text_options(model.text_towers[0], "original", None, tmp_path / "emb")
    with torch.no_grad():
        ours = model.encode_text(["a (xlstyle:1.2) circle"], options)
    pieces = [("a ", 1.0), ([49408, 49409], 1.2), (" circle", 1.0)]
    crossattn, pooled = reference_text(weights, config, pieces, added=vectors)
    assert_close(ours.crossattn, crossattn)
    assert_close(ours.pooled, pooled)
    plain, plain_pooled = reference_text(weights, config, [("a ", 1.0), ("xlstyle", 1.2), (" circle", 1.0)])
    assert (ours.pooled - plain_pooled).abs().max() > 1e-3  # the vectors reach the pooled vector too


def test_an_sd1_embedding_on_sdxl_is_a_one_line_error(sdxl, tmp_path, run_cli):
    from safetensors.torch import save_file

    path, _, _ = sdxl
    (tmp_path / "emb").mkdir()
    save_file({"emb_params": torch.randn(2, 768)}, str(tmp_path / "emb" / "oldstyle.safetensors"))
    result = run_cli("txt2img", "a oldstyle circle", "--ckpt", path, "--embeddings", tmp_path / "emb", "--steps", "1",
                     "--height", "64", "--width", "64", "--no-watermark", "-o", tmp_path / "x.png")
    assert result.code == 2, result.stderr
    message = [line for line in result.stderr.splitlines() if "oldstyle" in line]
    assert message == [f"error: embedding {tmp_path / 'emb' / 'oldstyle.safetensors'}: a one-tower embedding "
                       "(SD 1.x, 768 wide), this model's text encoders take clip_l and clip_g (an SDXL model); "
                       "use an embedding made for it"], result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "x.png").exists()


# -- 3. LoRA in kohya's SDXL naming -----------------------------------------------------------------

RANK, ALPHA, WEIGHT = 4, 2.0, 0.7
# kohya's key stem -> (where the test merges it by hand, the shape of that weight)
UNET_ORIGINAL = {  # kohya's SDXL names are the original UNet's: merged into the original tensors
    "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q": "model.diffusion_model.input_blocks.4.1."
                                                                 "transformer_blocks.0.attn1.to_q.weight",
    "lora_unet_input_blocks_1_0_in_layers_2": "model.diffusion_model.input_blocks.1.0.in_layers.2.weight",
    "lora_unet_label_emb_0_0": "model.diffusion_model.label_emb.0.0.weight",
}
UNET_DIFFUSERS = {  # diffusers-named files: merged into diffusers' converted UNet
    "lora_unet_mid_block_attentions_0_proj_in": "mid_block.attentions.0.proj_in.weight",
    "lora_unet_up_blocks_0_attentions_1_transformer_blocks_1_attn2_to_k": "up_blocks.0.attentions.1."
                                                                         "transformer_blocks.1.attn2.to_k.weight",
}
TE = {  # kohya's text names are transformers' module paths: merged into transformers' towers
    "lora_te1_text_model_encoder_layers_0_self_attn_q_proj": (0, "self_attn.q_proj.weight"),
    "lora_te1_text_model_encoder_layers_10_mlp_fc2": (0, "mlp.fc2.weight"),
    "lora_te2_text_model_encoder_layers_1_self_attn_v_proj": (1, "self_attn.v_proj.weight"),
    "lora_te2_text_model_encoder_layers_2_self_attn_out_proj": (1, "self_attn.out_proj.weight"),
    "lora_te2_text_model_encoder_layers_0_mlp_fc1": (1, "mlp.fc1.weight"),
}


def lora_pair(shape, generator):
    """(down, up) for a weight of `shape`: convolutions down [r, in, kh, kw], up [out, r, 1, 1]."""
    down = torch.randn(RANK, *shape[1:], generator=generator) * 0.3
    up = torch.randn(shape[0], RANK, *([1, 1] if len(shape) == 4 else []), generator=generator) * 0.3
    return down, up


def by_hand(weight, down, up):
    """W + weight · (alpha / rank) · up @ down, reshaped to W."""
    return weight + WEIGHT * (ALPHA / RANK) * (up.flatten(1) @ down.flatten(1)).reshape(weight.shape)


def hf_layer_key(model, stem, part):
    layer = stem.split("_layers_")[1].split("_")[0]
    names = dict(model.named_parameters())
    return next(name for name in names if name.endswith(f"encoder.layers.{layer}.{part}"))


def test_kohya_sdxl_lora_matches_a_merge_by_hand(sdxl, tmp_path):
    from safetensors.torch import save_file
    from sdxl_reference import diffusers_unet, time_ids

    from sd_cli.loading.lora import LoraMerger, LoraUse
    from sd_cli.models.sdxl_conditioning import SizeConditioning

    path, weights, config = sdxl
    g = torch.Generator().manual_seed(3)
    unet_ref = diffusers_unet(weights, config)
    towers = {0: hf_tower(weights, 0, emb_models(config)[0]["target"]), 1: hf_tower(weights, 1, emb_models(config)[1]["target"])}
    lora, merged = {}, dict(weights)
    diffusers_params = dict(unet_ref.named_parameters())
    pairs = {}
    for stem, key in UNET_ORIGINAL.items():
        pairs[stem] = lora_pair(weights[key].shape, g)
        merged[key] = by_hand(weights[key], *pairs[stem])
    for stem, name in UNET_DIFFUSERS.items():
        pairs[stem] = lora_pair(diffusers_params[name].shape, g)
    for stem, (index, part) in TE.items():
        pairs[stem] = lora_pair(dict(towers[index].named_parameters())[hf_layer_key(towers[index], stem, part)].shape, g)
    for stem, (down, up) in pairs.items():
        lora.update({f"{stem}.lora_down.weight": down, f"{stem}.lora_up.weight": up, f"{stem}.alpha": torch.tensor(ALPHA)})
    save_file(lora, str(tmp_path / "xl.safetensors"))

    unet_ref = diffusers_unet(merged, config)  # the original-named merges, converted
    with torch.no_grad():
        params = dict(unet_ref.named_parameters())
        for stem, name in UNET_DIFFUSERS.items():
            params[name].copy_(by_hand(params[name], *pairs[stem]))
        for stem, (index, part) in TE.items():
            param = dict(towers[index].named_parameters())[hf_layer_key(towers[index], stem, part)]
            param.copy_(by_hand(param, *pairs[stem]))

    model = load_model(path).model
    merger = LoraMerger(model)
    before = model.encode_text(["a red circle"], TextOptions()).crossattn.detach()
    merger.apply((LoraUse(tmp_path / "xl.safetensors", WEIGHT),))
    sizes = SizeConditioning((128, 128), target_size=(128, 128))
    x, t = torch.randn(1, 4, 16, 16, generator=g), torch.tensor([500])
    with torch.no_grad():
        text = model.encode_text(["a red circle"], TextOptions())
        ours = model.unet(x, t, text.crossattn, model.vector(text, sizes))
        hidden, pooled = [], None
        for index, tower in towers.items():
            ids = hf_tokens_for(index)
            out = tower(input_ids=ids, output_hidden_states=True)
            hidden.append(out.hidden_states[11] if index == 0 else out.hidden_states[-2])
            pooled = out.text_embeds if index == 1 else pooled
        crossattn = torch.cat(hidden, dim=2)
        theirs = unet_ref(x, t, encoder_hidden_states=crossattn,
                          added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids(sizes, 1)}).sample
    assert (text.crossattn - before).abs().max() > 1e-2  # the LoRA changes the conditioning
    assert_close(text.crossattn, crossattn)
    assert_close(text.pooled, pooled)
    assert_close(ours, theirs, tolerance=1e-4)
    merger.restore()
    after = model.encode_text(["a red circle"], TextOptions()).crossattn.detach()
    assert torch.equal(before, after)


def hf_tokens_for(index):
    from sdxl_reference import hf_tokens

    return hf_tokens(["a red circle"], pad_with_zero=index == 1)


# -- 4. --vae ----------------------------------------------------------------------------------------

def test_vae_file_decodes_sdxl_as_diffusers_does_with_it(sdxl, run_cli, tmp_path):
    """An fp16 diffusers-layout VAE (as the SDXL fp16-fix VAE ships): the PNG is that VAE's decode."""
    import numpy as np
    from PIL import Image
    from safetensors.torch import save_file

    from sd_cli.files.images import to_uint8
    from sd_cli.files.infotext import parse_infotext
    from sd_cli.pipelines.txt2img import txt2img_latents
    from sd_cli.sampling.denoising import SamplingParams

    path, _, _ = sdxl
    torch.manual_seed(5)
    theirs = diffusers.AutoencoderKL(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 4,
                                     up_block_types=["UpDecoderBlock2D"] * 4, block_out_channels=(32, 32, 64, 64),
                                     layers_per_block=1, latent_channels=4, norm_num_groups=32).eval()
    halves = {key: value.half().contiguous() for key, value in theirs.state_dict().items()}
    save_file(halves, str(tmp_path / "sdxl-vae-fp16-fix.safetensors"))
    theirs.load_state_dict({key: value.float() for key, value in halves.items()})
    common = ["a red circle", "--ckpt", path, "--sampler", "euler", "--steps", "2", "--scale", "4", "--height", "128",
              "--width", "128", "--seed", "7", "--no-watermark"]
    assert run_cli("txt2img", *common, "-o", tmp_path / "own.png").code == 0
    result = run_cli("txt2img", *common, "--vae", tmp_path / "sdxl-vae-fp16-fix.safetensors", "-o", tmp_path / "vae.png")
    assert result.code == 0, result.stderr
    model = load_model(path).model
    latents = txt2img_latents(model, ["a red circle"], [""], [7], SamplingParams("euler", 2, 4.0), 128, 128)
    with torch.no_grad():
        expected = to_uint8(theirs.decode(latents / 0.13025).sample)[0].astype(np.int16)
    written = np.asarray(Image.open(tmp_path / "vae.png").convert("RGB")).astype(np.int16)
    own = np.asarray(Image.open(tmp_path / "own.png").convert("RGB")).astype(np.int16)
    assert np.abs(written - expected).max() <= 1 and np.abs(written - own).max() > 20
    assert parse_infotext(Image.open(tmp_path / "vae.png").info["parameters"])[2]["VAE"] == "sdxl-vae-fp16-fix.safetensors"


# -- 5. prompt files, --json, info and torchrun on an SDXL file ----------------------------------------

def _pixels(path):
    import numpy as np
    from PIL import Image

    return np.asarray(Image.open(path).convert("RGB"))


def test_prompt_file_json_info_and_torchrun_on_sdxl(sdxl, run_cli, tmp_path):
    """A prompt file with an SDXL embedding and a LoRA tag: --json records what info reads back, and two
    torchrun processes write the very files one process does."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    from safetensors.torch import save_file

    path, _, _ = sdxl
    write_sdxl_embedding(tmp_path / "emb")
    (tmp_path / "loras").mkdir()
    g = torch.Generator().manual_seed(1)
    down, up = lora_pair((64, 256), g)
    save_file({"lora_te1_text_model_encoder_layers_0_mlp_fc2.lora_down.weight": down,
               "lora_te1_text_model_encoder_layers_0_mlp_fc2.lora_up.weight": up}, str(tmp_path / "loras" / "xl.safetensors"))
    prompts = tmp_path / "p.txt"
    prompts.write_text('a xlstyle circle\n{"prompt": "a <lora:xl:0.5> square", "seed": 50, "negative_prompt": "green"}\n'
                       '--prompt "a (green:1.2) triangle" --cfg_scale 3\n')
    common = ["--from-file", prompts, "--ckpt", path, "--sampler", "euler", "--steps", "1", "--seed", "7", "--height",
              "64", "--width", "64", "--no-watermark", "--embeddings", tmp_path / "emb", "--lora-dir", tmp_path / "loras",
              "--name", "{index}-{seed}", "--json"]
    # both runs in subprocesses with one thread each: a different thread count may round a pixel differently
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}

    def sd_cli(*launcher, outdir):
        return subprocess.run([sys.executable, *launcher, "-m", "sd_cli", "txt2img", *map(str, common), "--outdir",
                               str(tmp_path / outdir)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)

    single = sd_cli(outdir="one")
    assert single.returncode == 0, single.stderr[-3000:]
    records = [json.loads(line) for line in single.stdout.splitlines()]
    assert [(r["seed"], r["scale"], r["negative_prompt"]) for r in records] == [(7, 5.0, ""), (50, 5.0, "green"), (9, 3.0, "")]
    assert records[0]["parameters"]["TI hashes"].startswith("xlstyle: ")
    assert records[1]["parameters"]["Lora hashes"].startswith("xl: ")
    for record in records:
        info = run_cli("info", "--json", tmp_path / record["path"])
        assert info.code == 0 and json.loads(info.stdout)["parameters"] == record["parameters"]
    result = sd_cli("-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", outdir="two")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.count("wrote 3 image(s) by 2 processes") == 1
    names = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert names == ["0-7.png", "1-50.png", "2-9.png"]
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == names
    for name in names:
        assert (_pixels(tmp_path / "one" / name) == _pixels(tmp_path / "two" / name)).all(), name
