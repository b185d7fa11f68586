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
