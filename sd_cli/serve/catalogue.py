"""The read-only listings of the API (sd-models, samplers, schedulers, upscalers, sd-vae, loras,
embeddings), GET /options and POST /png-info, in AUTOMATIC1111's shapes."""

from __future__ import annotations

import io

from pydantic import BaseModel

from sd_cli.fields import HIRES_UPSCALER_LABELS
from sd_cli.sampling.samplers import SAMPLERS, SCHEDULES


class PngInfoRequest(BaseModel):
    image: str


def options(server) -> dict:
    """What clients read back: the current checkpoint (as sd-models titles it) and clip skip."""
    return {"sd_model_checkpoint": server.current.title, "sd_checkpoint_hash": None,
            "CLIP_stop_at_last_layers": 1, "sd_vae": "Automatic", "samples_format": "png"}


def sd_models(server) -> list[dict]:
    return [{"title": c.title, "model_name": c.model_name, "hash": None, "sha256": None,
             "filename": str(c.path), "config": None} for c in server.catalogue.all()]


def samplers(server) -> list[dict]:
    return [{"name": spec.label, "aliases": [spec.id, *spec.aliases], "options": {}}
            for spec in SAMPLERS.values() if spec.id != "dpm"]  # "DPM++ 2M" is dpmpp_2m by name


def schedulers(server) -> list[dict]:
    automatic = {"name": "automatic", "label": "Automatic", "aliases": None, "default_rho": None,
                 "need_inner_model": False}
    return [automatic] + [{"name": s.id, "label": s.label, "aliases": list(s.aliases) or None, "default_rho": None,
                           "need_inner_model": False} for s in SCHEDULES.values()]


def upscalers(server) -> list[dict]:
    return [{"name": label, "model_name": None, "model_path": None, "model_url": None, "scale": None}
            for label in HIRES_UPSCALER_LABELS.values()]


def latent_upscale_modes(server) -> list[dict]:
    return [{"name": label} for label in HIRES_UPSCALER_LABELS.values()]


def sd_vae(server) -> list[dict]:
    return []  # a separate VAE is a CLI option (--vae); the server renders with each checkpoint's own


def loras(server) -> list[dict]:
    from sd_cli.loading.lora import SUFFIXES

    folder = server.settings.lora_dir
    files = sorted(p for p in folder.iterdir() if p.suffix in SUFFIXES and p.is_file()) if folder.is_dir() else []
    return [{"name": p.stem, "alias": p.stem, "path": str(p), "metadata": {}} for p in files]


def embeddings(server) -> dict:
    from sd_cli.prompting.embeddings import SUFFIXES

    folder = server.settings.embeddings_dir
    files = sorted(p for p in folder.rglob("*") if p.suffix in SUFFIXES and p.is_file()) if folder else []
    return {"loaded": {p.stem: {"step": None, "sd_checkpoint": None, "sd_checkpoint_name": None, "shape": None,
                                "vectors": None} for p in files}, "skipped": {}}


LISTINGS = {"sd-models": sd_models, "samplers": samplers, "schedulers": schedulers, "upscalers": upscalers,
            "latent-upscale-modes": latent_upscale_modes, "sd-vae": sd_vae, "loras": loras, "embeddings": embeddings}


def png_info(image: str, limits) -> dict:
    """The parameters text of a base64 image, split as AUTOMATIC1111 does ({info, items, parameters})."""
    from PIL import Image

    from sd_cli.files.infotext import PNG_KEY, parse_infotext
    from sd_cli.serve.images import decode_image

    data, _ = decode_image(image.strip(), "image", limits)
    with Image.open(io.BytesIO(data)) as opened:
        chunks = {k: v for k, v in opened.info.items() if isinstance(k, str) and isinstance(v, str)}
    text = chunks.pop(PNG_KEY, "")
    prompt, negative, fields = parse_infotext(text) if text else ("", "", {})
    parameters = {"Prompt": prompt, "Negative prompt": negative, **fields} if text else {}
    return {"info": text, "items": chunks, "parameters": parameters}
