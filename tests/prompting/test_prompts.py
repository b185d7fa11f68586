"""Prompt emphasis, long-prompt chunks, clip skip and textual inversion embeddings (prompts.py, embeddings.py).

Expected weights and token layouts are written out by hand; encodings are checked against the
text encoder run on the hand-made tokens, and clip skip against transformers' hidden states.
"""

import hashlib

import pytest
import torch
from PIL import Image

from sd_cli.errors import UsageError
from sd_cli.files.infotext import parse_infotext
from sd_cli.models.text_encoder import CLIPTextEncoder, OpenCLIPTextEncoder
from sd_cli.prompting.prompts import TextOptions, build_chunks, encode_prompts, match_lengths, parse_emphasis, used_embeddings
from tiny_models import TEXT_WIDTH, clip_text_weights, openclip_text_weights

SOT, EOT = 49406, 49407
R, S = 1.1, 1 / 1.1


def test_parse_emphasis_by_hand():
    assert parse_emphasis("a cat") == [("a cat", 1.0)]
    assert parse_emphasis("(a) cat") == [("a", R), (" cat", 1.0)]
    assert parse_emphasis("((a)) [b]") == [("a", R * R), (" ", 1.0), ("b", S)]
    assert parse_emphasis("(a:1.3) c") == [("a", 1.3), (" c", 1.0)]
    assert parse_emphasis("(a (b:2) c)") == [("a ", R), ("b", 2 * R), (" c", R)]
    assert parse_emphasis(r"\(a\) \[b\] \\") == [("(a) [b] \\", 1.0)]
    assert parse_emphasis("(open [both") == [("open ", R), ("both", R * S)]  # unclosed: to the end
    assert parse_emphasis("a ) ] b: c") == [("a ) ] b: c", 1.0)]  # stray closers and colons are text
    assert parse_emphasis("a BREAK b") == [("a", 1.0), ("BREAK", -1.0), ("b", 1.0)]
    assert parse_emphasis("aBREAK b") == [("aBREAK b", 1.0)]
    assert parse_emphasis("") == [("", 1.0)]


def _load(cls, weights):
    with torch.device("meta"):
        encoder = cls.from_checkpoint(weights, layer="penultimate" if cls is OpenCLIPTextEncoder else "last")
    encoder.load_state_dict(cls.module_state_dict_from_checkpoint(weights)[0], strict=True, assign=True)
    return encoder.eval()


@pytest.fixture(scope="module")
def sd1():
    return _load(CLIPTextEncoder, clip_text_weights(1))


@pytest.fixture(scope="module")
def sd2():
    return _load(OpenCLIPTextEncoder, openclip_text_weights(1))


def ids(encoder, text):
    return encoder.bpe().encode(text)


@pytest.mark.parametrize("which", ["sd1", "sd2"])
def test_plain_prompt_is_bit_identical_to_the_original(which, request):
    encoder = request.getfixturevalue(which)
    prompts = ["a photo of a cat", "", "a red circle, on a mat"]
    with torch.inference_mode():
        ours = encode_prompts(encoder, prompts, TextOptions())
        assert torch.equal(ours, encoder(prompts))
        assert torch.equal(encode_prompts(encoder, prompts, TextOptions(emphasis="none")), ours)


def test_chunk_tokens_and_weights_by_hand(sd1):
    (chunk,) = build_chunks("a (cat:1.5) [dog]", sd1, TextOptions())
    a, cat, dog = ids(sd1, "a") + ids(sd1, "cat") + ids(sd1, "dog")
    assert chunk.tokens == [SOT, a, cat, dog, EOT] + [EOT] * 72
    assert chunk.weights == [1.0, 1.0, 1.5, S] + [1.0] * 73
    (literal,) = build_chunks("a (cat:1.5)", sd1, TextOptions(emphasis="none"))
    assert literal.tokens == sd1.tokenize(["a (cat:1.5)"])[0].tolist()


def test_long_prompt_chunks_break_and_comma_backtrack(sd2):
    cat, dog, comma = ids(sd2, "cat")[0], ids(sd2, "dog")[0], ids(sd2, ",")[0]
    chunks = build_chunks("cat " * 100, sd2, TextOptions())
    assert [c.tokens for c in chunks] == [[SOT] + [cat] * 75 + [EOT], [SOT] + [cat] * 25 + [EOT] + [0] * 50]
    # full at 75 with a comma 5 tokens back: the words after the comma move to the next chunk
    chunks = build_chunks("cat " * 70 + ", " + "dog " * 10, sd2, TextOptions())
    assert chunks[0].tokens == [SOT] + [cat] * 70 + [comma, EOT] + [0] * 4
    assert chunks[1].tokens == [SOT] + [dog] * 10 + [EOT] + [0] * 65
    chunks = build_chunks("cat BREAK (dog)", sd2, TextOptions())
    assert [c.tokens[:3] for c in chunks] == [[SOT, cat, EOT], [SOT, dog, EOT]]
    assert chunks[1].weights[:3] == [1.0, R, 1.0]
    with torch.inference_mode():
        z = encode_prompts(sd2, ["cat " * 100, "cat"], TextOptions())
        assert z.shape == (2, 154, TEXT_WIDTH)
        assert torch.equal(z[1:, 77:], sd2([""]))  # the shorter prompt is padded with empty chunks
        assert torch.equal(z[:1, :77], sd2.encode(torch.tensor([[SOT] + [cat] * 75 + [EOT]])))


def _cat_at_one_and_a_half() -> torch.Tensor:
    """Per-token weights of "a (cat:1.5)": start token, "a", then "cat" at 1.5."""
    weights = torch.ones(1, 77)
    weights[0, 2] = 1.5
    return weights


def _with_final_norm_bias(bias: float):
    weights = clip_text_weights(1)
    weights["cond_stage_model.transformer.text_model.final_layer_norm.bias"] += bias
    return _load(CLIPTextEncoder, weights)


def test_original_emphasis_scales_then_restores_the_mean():
    encoder = _with_final_norm_bias(0.3)  # real encoders' outputs have a mean well away from 0
    with torch.inference_mode():
        plain = encoder(["a cat"])  # "a " and "cat" tokenised apart give the same tokens
        weighted = encode_prompts(encoder, ["a (cat:1.5)"], TextOptions())
    weights = _cat_at_one_and_a_half()
    expected = plain * weights[..., None]
    expected = expected * (plain.mean() / expected.mean())
    torch.testing.assert_close(weighted, expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(weighted.mean(), plain.mean())


def test_emphasis_on_a_zero_mean_encoding_scales_without_dividing_by_rounding_noise(sd1):
    with torch.inference_mode():
        plain = sd1(["a cat"])  # the tiny encoder's final LayerNorm has zero bias: mean ~1e-8
        weighted = encode_prompts(sd1, ["a (cat:1.5)"], TextOptions())
    weights = _cat_at_one_and_a_half()
    assert plain.mean().abs() < 1e-6 * plain.abs().mean()
    assert torch.isfinite(weighted).all()
    torch.testing.assert_close(weighted, plain * weights[..., None], rtol=1e-6, atol=1e-6)


def test_negative_prompt_padded_to_the_prompts_chunks(sd1):
    class Model:
        def encode_text(self, prompts):
            return encode_prompts(sd1, prompts, TextOptions())

    with torch.inference_mode():
        cond, uncond = Model().encode_text(["cat " * 80]), Model().encode_text(["blurry"])
        cond, uncond = match_lengths(lambda n: Model().encode_text([""] * n), cond, uncond)
        assert cond.shape == uncond.shape == (1, 154, TEXT_WIDTH)
        assert torch.equal(uncond[:, :77], sd1(["blurry"])) and torch.equal(uncond[:, 77:], sd1([""]))


def test_clip_skip_is_transformers_hidden_state_through_the_final_norm():
    from transformers import CLIPTextConfig, CLIPTextModel

    weights = clip_text_weights(3)
    encoder = _load(CLIPTextEncoder, weights)
    hf = CLIPTextModel(CLIPTextConfig(hidden_size=TEXT_WIDTH, intermediate_size=4 * TEXT_WIDTH, num_hidden_layers=2,
                                      num_attention_heads=1, vocab_size=49408, hidden_act="quick_gelu")).eval()
    prefix = "cond_stage_model.transformer.text_model."
    inner = getattr(hf, "text_model", hf)  # transformers 5 dropped the text_model level
    missing, _ = inner.load_state_dict({k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)},
                                       strict=False)
    assert missing == []
    tokens = encoder.tokenize(["a red circle"])
    encoder.clip_skip = 2
    with torch.inference_mode():
        hidden = hf(tokens, output_hidden_states=True).hidden_states[-2]
        torch.testing.assert_close(encoder.encode(tokens), inner.final_layer_norm(hidden), rtol=1e-5, atol=1e-5)
        encoder.clip_skip = 1
        torch.testing.assert_close(encoder.encode(tokens), hf(tokens).last_hidden_state, rtol=1e-5, atol=1e-5)


def test_clip_skip_on_sd2_counts_from_the_last_block(sd2):
    tokens = sd2.tokenize(["a red circle"])
    with torch.inference_mode():
        default = sd2.encode(tokens)  # the YAML's penultimate layer
        try:
            sd2.clip_skip = 2
            assert torch.equal(sd2.encode(tokens), default)
            sd2.clip_skip = 1
            last = sd2.encode(tokens)
        finally:
            sd2.clip_skip = None
    sd2.layer = "last"
    try:
        with torch.inference_mode():  # as `last` was: inference runs the linear layers on oneDNN
            assert torch.equal(sd2.encode(tokens), last) and not torch.equal(last, default)
    finally:
        sd2.layer = "penultimate"


def write_embeddings(folder, width=TEXT_WIDTH):
    """An AUTOMATIC1111 .pt (string_to_param) and .safetensors (emb_params), as its trainer saves them."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(5)
    pt_vectors, st_vectors = torch.randn(2, width, generator=g), torch.randn(3, width, generator=g)
    torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": torch.nn.Parameter(pt_vectors)},
                "name": "tistyle", "step": 1500, "sd_checkpoint": "abcdef12", "sd_checkpoint_name": "tiny"},
               folder / "tistyle.pt")
    save_file({"emb_params": st_vectors}, str(folder / "ti-other.safetensors"))
    return pt_vectors, st_vectors


def test_embeddings_in_both_formats(sd1, tmp_path):
    from sd_cli.prompting.embeddings import scan_folder

    pt_vectors, st_vectors = write_embeddings(tmp_path / "emb")
    options = TextOptions(embeddings=scan_folder(tmp_path / "emb", sd1.bpe().encode))
    (chunk,) = build_chunks("a tistyle cat, (ti-other:1.2)", sd1, options)
    a, cat, comma = ids(sd1, "a")[0], ids(sd1, "cat")[0], ids(sd1, ",")[0]
    assert chunk.tokens[:10] == [SOT, a, EOT, EOT, cat, comma, EOT, EOT, EOT, EOT]  # placeholders: the pad id
    assert chunk.weights[5:10] == [1.0, 1.2, 1.2, 1.2, 1.0]
    assert [(pos, emb.name) for pos, emb in chunk.fixes] == [(2, "tistyle"), (6, "ti-other")]
    embedded = sd1.token_embedding(torch.tensor([chunk.tokens])).detach().clone()
    embedded[0, 2:4], embedded[0, 6:9] = pt_vectors, st_vectors
    with torch.inference_mode():
        expected = sd1.encode_embedded(embedded)
        z = encode_prompts(sd1, ["a tistyle cat, ti-other"], options)
    torch.testing.assert_close(z, expected, rtol=0, atol=0)
    used = used_embeddings(["a tistyle cat", "no ti-other"], sd1, options)
    digest = hashlib.sha256((tmp_path / "emb" / "tistyle.pt").read_bytes()).hexdigest()[:10]
    assert [(e.name, e.hash) for e in used][0] == ("tistyle", digest) and len(used) == 2


def test_embedding_errors_name_the_file(sd1, tmp_path):
    from sd_cli.prompting.embeddings import read_embedding, scan_folder

    write_embeddings(tmp_path / "wide", width=2 * TEXT_WIDTH)
    options = TextOptions(embeddings=scan_folder(tmp_path / "wide", sd1.bpe().encode))
    with pytest.raises(UsageError, match=r"tistyle\.pt.*128 wide.*64 wide"):
        encode_prompts(sd1, ["a tistyle"], options)
    unsafe = tmp_path / "unsafe.pt"
    torch.save({"string_to_param": {"*": torch.nn.Linear(2, 2)}}, unsafe)
    with pytest.raises(UsageError, match=r"unsafe\.pt: refused"):
        read_embedding(unsafe)
    with pytest.raises(UsageError, match="no such folder"):
        scan_folder(tmp_path / "missing", sd1.bpe().encode)


FAST = ("--steps", "2", "--seed", "7")


def test_cli_records_clip_skip_ti_hashes_and_emphasis(run_cli, sd1_ckpt, tmp_path):
    write_embeddings(tmp_path / "emb")
    out = tmp_path / "ti.png"
    prompt = "a (tistyle:1.2) circle " + "red " * 80
    result = run_cli("txt2img", prompt, "--ckpt", sd1_ckpt, *FAST, "--embeddings", tmp_path / "emb",
                     "--clip-skip", "2", "-o", out)
    assert result.code == 0, result.stderr
    recorded, _, fields = parse_infotext(Image.open(out).text["parameters"])
    assert recorded == prompt and fields["Clip skip"] == "2" and "Emphasis" not in fields
    assert fields["TI hashes"].startswith("tistyle: ") and len(fields["TI hashes"]) == len("tistyle: ") + 10
    result = run_cli("txt2img", "(a) circle", "--ckpt", sd1_ckpt, *FAST, "--emphasis", "none", "-o", out)
    fields = parse_infotext(Image.open(out).text["parameters"])[2]
    assert result.code == 0 and fields["Emphasis"] == "None" and "Clip skip" not in fields
    result = run_cli("txt2img", "a", "--ckpt", sd1_ckpt, *FAST, "--clip-skip", "3", "-o", out)
    assert result.code == 2 and "--clip-skip 3" in result.stderr
    result = run_cli("txt2img", "a", "--ckpt", sd1_ckpt, *FAST, "--embeddings", tmp_path / "none", "-o", out)
    assert result.code == 2 and "no such folder" in result.stderr


def test_an_sdxl_embedding_on_sd1_names_the_mismatch(sd1, tmp_path):
    from safetensors.torch import save_file

    from sd_cli.prompting.embeddings import scan_folder

    (tmp_path / "xl").mkdir()
    save_file({"clip_l": torch.randn(1, TEXT_WIDTH), "clip_g": torch.randn(1, 1280)}, str(tmp_path / "xl" / "xls.safetensors"))
    options = TextOptions(embeddings=scan_folder(tmp_path / "xl", sd1.bpe().encode))
    with pytest.raises(UsageError, match=r"xls\.safetensors: an SDXL embedding \(clip_l and clip_g\), this model's "
                                         r"text encoders take one tensor \(an SD 1\.x/2\.x model\)"):
        encode_prompts(sd1, ["a xls"], options)
