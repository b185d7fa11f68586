"""Text towers as transformers' CLIP models, built from an original checkpoint's tensors, for parity tests.

Independent of sd_cli: the open_clip → Hugging Face renaming is written here, and the models are
transformers' own CLIPTextModel / CLIPTextModelWithProjection (eager attention).
"""

import transformers

OPEN_CLIP_TO_HF_BLOCK = [("ln_1", "layer_norm1"), ("ln_2", "layer_norm2"), ("attn.out_proj", "self_attn.out_proj"),
                         ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2")]


def open_clip_to_hf(weights: dict, prefix: str) -> dict:
    """open_clip text tower keys under `prefix` → transformers CLIPTextModel[WithProjection] keys.

    q, k, v are split from in_proj; open_clip's text_projection P (used as x @ P) becomes the
    projection Linear's weight Pᵀ.
    """
    sd = {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}
    hf = {"embeddings.token_embedding.weight": sd["token_embedding.weight"],
          "embeddings.position_embedding.weight": sd["positional_embedding"],
          "final_layer_norm.weight": sd["ln_final.weight"], "final_layer_norm.bias": sd["ln_final.bias"]}
    layers = len({k.split(".")[2] for k in sd if k.startswith("transformer.resblocks.")})
    for i in range(layers):
        block, layer = f"transformer.resblocks.{i}.", f"encoder.layers.{i}."
        for kind in ("weight", "bias"):
            for name, part in zip("qkv", sd[f"{block}attn.in_proj_{kind}"].chunk(3)):
                hf[f"{layer}self_attn.{name}_proj.{kind}"] = part
            for theirs, ours in OPEN_CLIP_TO_HF_BLOCK:
                hf[f"{layer}{ours}.{kind}"] = sd[f"{block}{theirs}.{kind}"]
    hf = {"text_model." + k: v for k, v in hf.items()}
    if "text_projection" in sd:
        hf["text_projection.weight"] = sd["text_projection"].T.contiguous()
    return hf


def hf_text_model(hf_weights: dict, act: str):
    """CLIPTextModel, or CLIPTextModelWithProjection when the weights carry `text_projection.weight`."""
    width = hf_weights["text_model.embeddings.token_embedding.weight"].shape[1]
    layers = len({k.split(".")[3] for k in hf_weights if k.startswith("text_model.encoder.layers.")})
    projection = hf_weights.get("text_projection.weight")
    config = transformers.CLIPTextConfig(
        hidden_size=width, intermediate_size=hf_weights["text_model.encoder.layers.0.mlp.fc1.weight"].shape[0],
        num_hidden_layers=layers, num_attention_heads=max(1, width // 64), vocab_size=49408,
        max_position_embeddings=77, hidden_act=act, attn_implementation="eager",
        projection_dim=width if projection is None else projection.shape[0])
    model_class = transformers.CLIPTextModel if projection is None else transformers.CLIPTextModelWithProjection
    model = model_class(config).eval()
    if not any(key.startswith("text_model.") for key in model.state_dict()):  # transformers 5 drops the level
        hf_weights = {key.removeprefix("text_model."): value for key, value in hf_weights.items()}
    hf_weights = {key: value for key, value in hf_weights.items() if not key.endswith("embeddings.position_ids")}
    missing, unexpected = model.load_state_dict(hf_weights, strict=False)
    assert not unexpected and all(key.endswith("embeddings.position_ids") for key in missing)
    return model
