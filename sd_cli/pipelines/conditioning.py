"""The guided model every mode samples: prompt and negative-prompt embeddings bound to the UNet."""

from sd_cli.prompting.prompts import match_lengths
from sd_cli.sampling.guidance import GuidedModel


def guided_model(model, prompts: list[str], negative_prompts: list[str], scale: float) -> GuidedModel:
    """The classifier-free-guided prediction the samplers call; the unconditional branch encodes the
    negative prompt, and is skipped at scale 1."""
    cond = model.encode_text(prompts)
    uncond = model.encode_text(negative_prompts) if scale != 1.0 else None
    cond, uncond = match_lengths(model, cond, uncond)  # a long prompt or negative: pad the other
    return GuidedModel(model.unet, cond, uncond, scale, model.parameterization)
