"""SDXL's independent reference: diffusers' UNet and transformers' text towers built from a tiny sgm file.

diffusers' UNet2DConditionModel through diffusers' own LDM converter, configured as diffusers
configures SDXL (addition_embed_type "text_time": the size part of y from the raw numbers); the
text as sgm's embedders define it, from transformers' CLIPTextModel / CLIPTextModelWithProjection.
"""

import torch
from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, create_unet_diffusers_config_from_ldm
import diffusers

from hf_text import hf_text_model, open_clip_to_hf
from references import hf_clip_tokenizer
from sd_cli.models.sdxl_conditioning import SizeConditioning, TextConditioning

UNET = "model.diffusion_model."
EOT = 49407


def emb_models(config):
    return config["model"]["params"]["conditioner_config"]["params"]["emb_models"]


def diffusers_unet(weights, config):
    """diffusers' SDXL UNet: its converter's config, with the text_time embedding SDXL's files get.

    diffusers recognises SDXL by its full context widths (2048, 1280); for tiny widths it picks a
    plain projection, so the SDXL embedding type is set here.
    """
    unet_weights = {k: v for k, v in weights.items() if k.startswith(UNET)}
    unet_config = create_unet_diffusers_config_from_ldm(config, unet_weights)
    if "adm_in_channels" in config["model"]["params"]["network_config"]["params"]:
        unet_config.update(class_embed_type=None, addition_embed_type="text_time", addition_time_embed_dim=256)
    unet = diffusers.UNet2DConditionModel(**unet_config).eval()
    unet.load_state_dict(convert_ldm_unet_checkpoint(unet_weights, unet_config), strict=True)
    return unet


def hf_tokens(prompts, pad_with_zero: bool):
    """transformers' CLIP tokens; open_clip.tokenize's rows have 0 after the end token instead of 49407."""
    ids = hf_clip_tokenizer()(prompts, padding="max_length", max_length=77, truncation=True,
                              return_tensors="pt")["input_ids"]
    if pad_with_zero:
        after_end = torch.cumsum(ids == EOT, dim=1) - (ids == EOT).int() > 0
        ids = ids.masked_fill(after_end, 0)
    return ids


def hf_tower(weights, index: int, target: str):
    prefix = f"conditioner.embedders.{index}."
    if target.endswith("FrozenCLIPEmbedder"):
        hf = {k[len(prefix + "transformer."):]: v for k, v in weights.items() if k.startswith(prefix + "transformer.")}
        return hf_text_model(hf, "quick_gelu")
    return hf_text_model(open_clip_to_hf(weights, prefix + "model."), "gelu")


@torch.no_grad()
def reference_text(weights, config, prompts) -> TextConditioning:
    """crossattn and pooled the way sgm's embedders define them, from transformers' models."""
    hidden, pooled = [], []
    for index, entry in enumerate(emb_models(config)):
        target = entry["target"]
        if entry["input_key"] != "txt":
            continue
        model = hf_tower(weights, index, target)
        if target.endswith("FrozenCLIPEmbedder"):  # layer: hidden, layer_idx: 11
            out = model(input_ids=hf_tokens(prompts, pad_with_zero=False), output_hidden_states=True)
            hidden.append(out.hidden_states[entry["params"]["layer_idx"]])
        elif target.endswith("FrozenOpenCLIPEmbedder2"):  # penultimate without ln_final; pooled from the last
            out = model(input_ids=hf_tokens(prompts, pad_with_zero=True), output_hidden_states=True)
            hidden.append(out.hidden_states[-2])
            pooled.append(out.text_embeds)
        else:  # sgm's FrozenOpenCLIPEmbedder (SD 2.1): penultimate through ln_final
            out = model(input_ids=hf_tokens(prompts, pad_with_zero=True), output_hidden_states=True)
            hidden.append(getattr(model, "text_model", model).final_layer_norm(out.hidden_states[-2]))
    return TextConditioning(torch.cat(hidden, dim=2), torch.cat(pooled, dim=1) if pooled else None)


def time_ids(sizes: SizeConditioning, batch: int) -> torch.Tensor:
    """diffusers' add_time_ids: the raw numbers, in the order of the YAML's size embedders."""
    numbers = [*sizes.original_size, *sizes.crop_top_left]
    numbers += [*sizes.target_size] if sizes.aesthetic_score is None else [sizes.aesthetic_score]
    return torch.tensor([numbers] * batch, dtype=torch.float32)
