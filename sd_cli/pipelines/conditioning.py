"""The guided model every mode samples: prompt and negative-prompt conditioning bound to the UNet."""

from sd_cli.fields import AESTHETIC_SCORES  # the SDXL demo's refiner conditioning (conditional, unconditional)
from sd_cli.prompting.prompts import match_lengths
from sd_cli.sampling.guidance import GuidedModel


def guided_model(model, prompts: list[str], negative_prompts: list[str], scale: float,
                 size: tuple[int, int], aesthetic_scores: tuple[float, float] = AESTHETIC_SCORES) -> GuidedModel:
    """The classifier-free-guided prediction the samplers call for images of size (height, width); the
    unconditional branch encodes the negative prompt, and is skipped at scale 1. aesthetic_scores
    (conditional, unconditional) condition the SDXL refiner; other models have no such input."""
    if model.family.engine == "sgm":
        return _engine_guided_model(model, prompts, negative_prompts, scale, size, aesthetic_scores)
    cond = model.encode_text(prompts)
    uncond = model.encode_text(negative_prompts) if scale != 1.0 else None
    # a long prompt or negative: pad the other
    cond, uncond = match_lengths(lambda batch: model.encode_text([""] * batch), cond, uncond)
    return GuidedModel(model.unet, cond, uncond, scale, model.parameterization)


def _engine_guided_model(model, prompts, negative_prompts, scale, size, aesthetic_scores) -> GuidedModel:
    """generative-models' conditioning: crossattn and the vector y (pooled text, size, crop, target or
    aesthetic score). An SDXL base's empty negative prompt is zeros (the demo's force_uc_zero_embeddings,
    AUTOMATIC1111's rule when every negative is empty); the refiner encodes even an empty one."""
    from sd_cli.models.sdxl_conditioning import zero_text

    text = model.encode_text(prompts)
    # Every size value a generative-models YAML can ask for; each size embedder takes its own (the base
    # its target size, the refiner its aesthetic score). A session applies the run's size flags.
    sizes = model.size_conditioning(size, aesthetic_scores[0])
    if scale == 1.0:
        return GuidedModel(model.unet, text.crossattn, None, scale, model.parameterization,
                           vector=model.vector(text, sizes))
    if model.family.zero_empty_negative and not any(negative_prompts):
        uncond = zero_text(text)
    else:
        uncond = model.encode_text(negative_prompts)
    uncond_sizes = model.size_conditioning(size, aesthetic_scores[1])
    cond_x, uncond_x = match_lengths(lambda batch: model.encode_text([""] * batch).crossattn, text.crossattn,
                                     uncond.crossattn)
    return GuidedModel(model.unet, cond_x, uncond_x, scale, model.parameterization,
                       vector=model.vector(text, sizes), uncond_vector=model.vector(uncond, uncond_sizes))

