"""Text encoders against transformers' CLIPTextModel on the same tiny random weights (CPU, seconds).

transformers is the independent implementation: its CLIP text model and its Rust BPE tokenizer.
The SD2 checkpoint is written from the HF weights with this file's own open_clip key mapping.
"""

import gzip
import importlib.resources

import pytest
import torch
from references import hf_clip_tokenizer

from sd_cli.errors import CheckpointError
from sd_cli.models.text_encoder import CLIPTextEncoder, OpenCLIPTextEncoder

transformers = pytest.importorskip("transformers")

SOT, EOT = 49406, 49407
WIDTH, LAYERS = 128, 3  # 2 heads of 64, so the head split is exercised
HF_PREFIX = "cond_stage_model.transformer.text_model."
SD2 = "cond_stage_model.model."


def tiny_hf_clip(act: str, seed: int = 0):
    config = transformers.CLIPTextConfig(
        hidden_size=WIDTH, intermediate_size=4 * WIDTH, num_hidden_layers=LAYERS, num_attention_heads=WIDTH // 64,
        vocab_size=49408, max_position_embeddings=77, hidden_act=act, attn_implementation="eager")
    torch.manual_seed(seed)
    model = transformers.CLIPTextModel(config).eval()
    with torch.no_grad():  # HF initialises LayerNorms to 1/0 and biases to 0: randomise them too
        for name, param in model.named_parameters():
            if param.ndim == 1:
                param.add_(0.1 * torch.randn_like(param))
    return model


def sd1_checkpoint(hf, prefix=HF_PREFIX) -> dict:
    ckpt = {prefix + key.removeprefix("text_model."): value.clone() for key, value in hf.state_dict().items()}
    ckpt[prefix + "embeddings.position_ids"] = torch.arange(77)[None]  # kept by old transformers, as in the files
    ckpt["model.diffusion_model.out.2.bias"] = torch.zeros(4)  # not the text encoder's: left alone
    return ckpt


def sd2_checkpoint(hf) -> dict:
    """HF CLIPTextModel → open_clip text tower names (written independently of sd_cli's mapping)."""
    hf_sd = {key.removeprefix("text_model."): value for key, value in hf.state_dict().items()}
    ckpt = {SD2 + "token_embedding.weight": hf_sd["embeddings.token_embedding.weight"],
            SD2 + "positional_embedding": hf_sd["embeddings.position_embedding.weight"],
            SD2 + "ln_final.weight": hf_sd["final_layer_norm.weight"],
            SD2 + "ln_final.bias": hf_sd["final_layer_norm.bias"],
            SD2 + "text_projection": torch.randn(WIDTH, WIDTH),
            SD2 + "logit_scale": torch.tensor(4.6052),
            SD2 + "attn_mask": torch.full((77, 77), float("-inf")).triu(1)}
    for i in range(LAYERS):
        hf_layer, block = f"encoder.layers.{i}.", f"{SD2}transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            ckpt[f"{block}attn.in_proj_{kind}"] = torch.cat(
                [hf_sd[f"{hf_layer}self_attn.{p}_proj.{kind}"] for p in "qkv"])
            for ours, theirs in [("ln_1", "layer_norm1"), ("ln_2", "layer_norm2"), ("attn.out_proj", "self_attn.out_proj"),
                                 ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2")]:
                ckpt[f"{block}{ours}.{kind}"] = hf_sd[f"{hf_layer}{theirs}.{kind}"]
    return ckpt


def load(cls, ckpt, **yaml_params):
    with torch.device("meta"):
        encoder = cls.from_checkpoint(ckpt, **yaml_params)
    mapped, ignored, unknown = cls.module_state_dict_from_checkpoint(ckpt)
    assert unknown == []
    encoder.load_state_dict(mapped, strict=True, assign=True)
    return encoder.eval()


@pytest.fixture(scope="module")
def sd1_hf():
    return tiny_hf_clip("quick_gelu")


@pytest.fixture(scope="module")
def sd2_hf():
    return tiny_hf_clip("gelu", seed=1)


@pytest.fixture(scope="module")
def token_ids():
    torch.manual_seed(2)
    ids = torch.randint(0, 49408, (2, 77))
    ids[:, 0] = SOT
    return ids


@pytest.mark.parametrize("prefix", [HF_PREFIX, "cond_stage_model.transformer."])
def test_sd1_matches_hf_last_hidden_state(sd1_hf, token_ids, prefix):
    encoder = load(CLIPTextEncoder, sd1_checkpoint(sd1_hf, prefix))
    assert all(not p.is_meta for p in encoder.parameters())
    with torch.no_grad():
        ours = encoder.encode(token_ids)
        theirs = sd1_hf(input_ids=token_ids).last_hidden_state
    assert ours.shape == (2, 77, WIDTH)
    assert (ours - theirs).abs().max() < 1e-5


@pytest.mark.parametrize("layer", ["penultimate", "last"])
def test_sd2_matches_hf_hidden_states(sd2_hf, token_ids, layer):
    encoder = load(OpenCLIPTextEncoder, sd2_checkpoint(sd2_hf), freeze=True, layer=layer)
    with torch.no_grad():
        ours = encoder.encode(token_ids)
        out = sd2_hf(input_ids=token_ids, output_hidden_states=True)
        theirs = sd2_hf.final_layer_norm(out.hidden_states[-2]) if layer == "penultimate" else out.last_hidden_state
    assert (ours - theirs).abs().max() < 1e-5
    assert encoder.own_clip_skip == (2 if layer == "penultimate" else 1)


def test_sd2_tower_at_an_sgm_prefix(sd2_hf, token_ids):
    """sgm's SD 2.1 layout (SD-Turbo): the same tower under conditioner.embedders.0.model.*."""
    sgm = {key.replace(SD2, "conditioner.embedders.0.model."): value for key, value in sd2_checkpoint(sd2_hf).items()}
    prefix = "conditioner.embedders.0.model."
    with torch.device("meta"):
        encoder = OpenCLIPTextEncoder.from_checkpoint(sgm, prefix=prefix, layer="penultimate")
    mapped, ignored, unknown = OpenCLIPTextEncoder.module_state_dict_from_checkpoint(
        dict(sgm, **{"conditioner.embedders.1.x": torch.zeros(1)}), prefix)
    assert unknown == [] and sorted(ignored) == [prefix + "attn_mask", prefix + "logit_scale", prefix + "text_projection"]
    encoder.load_state_dict(mapped, strict=True, assign=True)
    assert encoder.checkpoint_prefix == prefix and set(encoder.checkpoint_state_dict()) == set(sgm) - set(ignored)
    with torch.no_grad():
        theirs = sd2_hf.final_layer_norm(sd2_hf(input_ids=token_ids, output_hidden_states=True).hidden_states[-2])
        assert (encoder.encode(token_ids) - theirs).abs().max() < 1e-5


def test_forward_takes_prompts(sd1_hf):
    encoder = load(CLIPTextEncoder, sd1_checkpoint(sd1_hf)).to(torch.float64)
    with torch.no_grad():
        out = encoder(["a photo of a cat", ""])
    assert out.shape == (2, 77, WIDTH) and out.dtype == torch.float64
    with torch.no_grad():
        expected = sd1_hf(input_ids=encoder.tokenize(["a photo of a cat", ""])).last_hidden_state
    assert (out - expected).abs().max() < 1e-5


@pytest.fixture(scope="module")
def sd1_encoder(sd1_hf):
    return load(CLIPTextEncoder, sd1_checkpoint(sd1_hf))


@pytest.fixture(scope="module")
def sd2_encoder(sd2_hf):
    return load(OpenCLIPTextEncoder, sd2_checkpoint(sd2_hf))


def test_tokenize_by_hand(sd1_encoder, sd2_encoder):
    with gzip.open(importlib.resources.files("open_clip") / "bpe_simple_vocab_16e6.txt.gz") as f:
        merges = f.read().decode("utf-8").split("\n")[1:48895]
    # ids: 256 single bytes, the same with "</w>", then one per merge in order
    assert 256 + (ord("a") - ord("!")) == 320  # "a</w>"
    assert "".join(merges[2368 - 512].split()) == "cat</w>"
    assert "".join(merges[1125 - 512].split()) == "photo</w>"
    words = [320, 1125, 539, 320, 2368]
    assert sd1_encoder.tokenize(["a photo of a cat"])[0].tolist() == [SOT, *words, EOT] + [EOT] * 70
    assert sd2_encoder.tokenize(["a photo of a cat"])[0].tolist() == [SOT, *words, EOT] + [0] * 70
    assert sd1_encoder.tokenize([""])[0].tolist() == [SOT, EOT] + [EOT] * 75
    assert sd2_encoder.tokenize([""])[0].tolist() == [SOT, EOT] + [0] * 75
    assert torch.equal(sd1_encoder.tokenize(["A Photo  OF a CAT"]), sd1_encoder.tokenize(["a photo of a cat"]))
    assert sd2_encoder.tokenize(["a photo of a cat"]).dtype == torch.int64


def test_tokenize_matches_transformers(sd1_encoder, sd2_encoder):
    prompts = ["a photo of a cat", "", "An astronaut riding a horse, 4k, trending on ArtStation!!",
               "portrait of a wizard's tower; highly-detailed, 8k uhd  (masterpiece:1.2)", "naïve café ☕ déjà vu 🙂"]
    expected = torch.tensor(hf_clip_tokenizer()(prompts, padding="max_length", max_length=77)["input_ids"])
    assert torch.equal(sd1_encoder.tokenize(prompts), expected)
    sd2 = sd2_encoder.tokenize(prompts)
    assert torch.equal(sd2[expected != EOT], expected[expected != EOT])
    assert torch.equal(sd2.argmax(1), (expected == EOT).int().argmax(1))  # EOT at the first EOT, 0 after it
    # HTML entities in text with a "<": SD1's cleaning (ftfy) keeps them, open_clip's unescapes them
    tagged = ["<b> fish &amp; chips"]
    assert torch.equal(sd1_encoder.tokenize(tagged), hf_clip_tokenizer()(
        tagged, padding="max_length", max_length=77, return_tensors="pt")["input_ids"])
    assert torch.equal(sd2_encoder.tokenize(tagged), sd2_encoder.tokenize(["<b> fish & chips"]))
    assert torch.equal(sd1_encoder.tokenize(["fish &amp; chips"]), sd1_encoder.tokenize(["fish & chips"]))


def test_long_prompt_is_cut_with_a_warning(sd1_encoder, sd2_encoder, capsys):
    cat = 2368
    for encoder in (sd1_encoder, sd2_encoder):
        tokens = encoder.tokenize(["cat " * 100, "cat " * 100, "cat " * 75])
        assert tokens[:, 0].tolist() == [SOT] * 3
        assert (tokens[:, 1:76] == cat).all() and tokens[:, 76].tolist() == [EOT] * 3
        err = capsys.readouterr().err
        assert err.count("warning:") == 1  # once per distinct prompt; 75 tokens fit
        assert "100 tokens" in err and "25 tokens are dropped" in err


def test_checkpoint_state_dict_round_trips(sd1_hf, sd2_hf):
    for cls, ckpt, ignored_names in [
        (CLIPTextEncoder, sd1_checkpoint(sd1_hf), {HF_PREFIX + "embeddings.position_ids"}),
        (OpenCLIPTextEncoder, sd2_checkpoint(sd2_hf), {SD2 + n for n in ("text_projection", "logit_scale", "attn_mask")}),
    ]:
        encoder = load(cls, ckpt)
        saved = encoder.checkpoint_state_dict()
        text_keys = {k for k in ckpt if k.startswith("cond_stage_model.")}
        kept = text_keys - ignored_names if cls is OpenCLIPTextEncoder else text_keys
        assert set(saved) == kept
        assert all(torch.equal(saved[k], ckpt[k]) and saved[k].dtype == ckpt[k].dtype for k in saved)
        mapped, ignored, unknown = cls.module_state_dict_from_checkpoint(saved)
        assert unknown == [] and set(ignored) == ignored_names & set(saved)
        own = encoder.state_dict()
        assert set(mapped) == set(own) and all(torch.equal(mapped[k], own[k]) for k in own)


def test_meta_build_infers_sizes_and_loads(sd2_hf):
    ckpt = sd2_checkpoint(sd2_hf)
    with torch.device("meta"):
        encoder = OpenCLIPTextEncoder.from_checkpoint(ckpt, layer="penultimate", arch="ViT-H-14",
                                                      version="laion2b_s32b_b79k", device="cuda", max_length=77)
    assert all(p.is_meta for p in encoder.parameters())
    assert len(encoder.transformer.resblocks) == LAYERS and encoder.ln_final.weight.shape == (WIDTH,)
    assert encoder.transformer.resblocks[0].attn.num_heads == 2 and encoder.context_length == 77
    encoder.load_state_dict(OpenCLIPTextEncoder.module_state_dict_from_checkpoint(ckpt)[0], strict=True, assign=True)
    assert encoder(["a cat"]).device.type == "cpu"


def test_full_size_builds_on_meta():
    sizes = {"ViT-L/14": (768, 12, CLIPTextEncoder, HF_PREFIX, "encoder.layers.{}.mlp.fc1.weight"),
             "ViT-H/14": (1024, 24, OpenCLIPTextEncoder, SD2, "transformer.resblocks.{}.mlp.c_fc.weight")}
    for width, layers, cls, prefix, fc1 in sizes.values():
        ckpt = {prefix + k: torch.empty(shape, device="meta") for k, shape in [
            ("token_embedding.weight" if cls is OpenCLIPTextEncoder else "embeddings.token_embedding.weight",
             (49408, width)),
            ("positional_embedding" if cls is OpenCLIPTextEncoder else "embeddings.position_embedding.weight",
             (77, width))]}
        ckpt.update({prefix + fc1.format(i): torch.empty(4 * width, width, device="meta") for i in range(layers)})
        with torch.device("meta"):
            encoder = cls.from_checkpoint(ckpt)
        assert len(encoder.transformer.resblocks) == layers
        assert encoder.transformer.resblocks[0].attn.num_heads == width // 64
        assert encoder.transformer.resblocks[0].mlp.c_fc.out_features == 4 * width


def test_bad_inputs(sd1_hf):
    ckpt = sd1_checkpoint(sd1_hf)
    with pytest.raises(ValueError, match="unknown config parameter"):
        CLIPTextEncoder.from_checkpoint(ckpt, pretrained="laion")
    with pytest.raises(ValueError, match="layer"):
        CLIPTextEncoder.from_checkpoint(ckpt, layer="penultimate")
    with pytest.raises(CheckpointError, match="cond_stage_model.model.token_embedding.weight"):
        OpenCLIPTextEncoder.from_checkpoint(ckpt)
    unknown_key = HF_PREFIX + "encoder.layers.0.self_attn.extra.weight"
    ckpt[unknown_key] = torch.zeros(1)
    assert CLIPTextEncoder.module_state_dict_from_checkpoint(ckpt)[2] == [unknown_key]
    del ckpt[HF_PREFIX + "encoder.layers.1.self_attn.k_proj.bias"]
    with pytest.raises(CheckpointError, match=r"layers\.1\.self_attn\.k_proj\.bias"):
        CLIPTextEncoder.module_state_dict_from_checkpoint(ckpt)


def test_tokenizers_share_the_vocabulary_open_clip_built_on_import():
    """Building the tables again cost 0.15-0.17 s of every load; the SD 1.x cleaning stays ours."""
    import open_clip.tokenizer

    from sd_cli.models.text_encoder import _bpe_tokenizer

    module_built = open_clip.tokenizer._tokenizer
    for hf_cleaning in (False, True):
        assert _bpe_tokenizer(hf_cleaning).bpe_ranks is module_built.bpe_ranks
    assert _bpe_tokenizer(True).clean_fn is not module_built.clean_fn
    assert _bpe_tokenizer(True).encode("A  Cat&amp;") == _bpe_tokenizer(False).encode("a cat&")
