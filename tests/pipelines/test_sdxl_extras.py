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
    """[(ids [77], weights [77])]: the pieces' tokens in chunks of 75 between SOT and EOT."""
    ids, weights = [], []
    for text, weight in pieces:
        tokens = hf_ids(text)
        ids += tokens
        weights += [weight] * len(tokens)
    chunks = []
    for start in range(0, max(len(ids), 1), 75):
        part, part_weights = ids[start:start + 75], weights[start:start + 75]
        room = 75 - len(part)
        chunks.append(([SOT] + part + [EOT] * (room + 1), [1.0] + part_weights + [1.0] * (room + 1)))
    return chunks


@torch.no_grad()
def reference_text(weights, config, pieces):
    """(crossattn [1, 77·chunks, 64 + 128], pooled [1, 96]) as AUTOMATIC1111 computes them for SDXL."""
    towers = []
    pooled = None
    for index, entry in enumerate(emb_models(config)):
        if entry["input_key"] != "txt":
            continue
        model, is_g = hf_tower(weights, index, entry["target"]), entry["target"].endswith("Embedder2")
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

@pytest.mark.parametrize("prompt, pieces", [
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
