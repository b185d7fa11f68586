"""What `sd-cli serve` is configured with: where it listens, who may call it, what it may load, and
how much one request may ask for. No fastapi import here: the command checks these before the
server starts."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from sd_cli.errors import UsageError
from sd_cli.fields import EMBEDDINGS_DIR, LORA_DIR


@dataclass(frozen=True)
class Limits:
    """Per-request bounds: past them a request is refused (413, 422 or 429), never rendered."""

    max_pixels: int = 2048 * 2048  # width * height of one image (the hires fix's final size included)
    max_steps: int = 150  # AUTOMATIC1111's slider maximum
    max_images: int = 16  # batch_size * n_iter
    max_batch: int = 8  # batch_size: images rendered together, the memory that counts
    max_queue: int = 16  # requests waiting behind the one rendering
    max_body_bytes: int = 32 * 1024 * 1024  # the whole request body, base64 images included
    max_image_pixels: int = 4096 * 4096  # a decoded init image or mask


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 7860
    checkpoint: Path | None = None  # the model loaded at start; None: sd_cli's built-in model
    model_dirs: tuple[Path, ...] = (Path("checkpoints"),)  # the only places a client can name a model in
    lora_dir: Path = LORA_DIR
    embeddings: Path | None = None  # None: checkpoints/embeddings when it exists, as the CLI
    vae_dir: Path = Path("checkpoints/vae")
    outdir: Path = Path("outputs/serve")  # save_images writes here, and nowhere else
    device: str = "auto"
    precision: str = "auto"
    credentials: dict[str, str] = field(default_factory=dict)  # user -> password; empty: no auth
    cors_origins: tuple[str, ...] = ()
    loaded_models: int = 2  # checkpoints kept loaded; switching back to one of them costs no load
    limits: Limits = Limits()

    @property
    def embeddings_dir(self) -> Path | None:
        if self.embeddings is not None:
            return self.embeddings
        return EMBEDDINGS_DIR if EMBEDDINGS_DIR.is_dir() else None


def parse_credentials(values: list[str] | None) -> dict[str, str]:
    """--api-auth user:pass (repeatable, or comma-separated as AUTOMATIC1111's) -> {user: password}."""
    credentials = {}
    for value in values or ():
        for pair in value.split(","):
            user, sep, password = pair.partition(":")
            if not sep or not user or not password:
                raise UsageError(f"--api-auth {pair!r} is not USER:PASSWORD; give both, e.g. --api-auth me:secret")
            credentials[user] = password
    return credentials


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve beyond this machine


def check_exposure(host: str, credentials: dict, no_auth: bool) -> None:
    """Beyond loopback anyone on the network can render and switch models: say so before starting."""
    if credentials and no_auth:
        raise UsageError("--api-auth and --no-auth contradict each other; give one of them")
    if not is_loopback(host) and not credentials and not no_auth:
        raise UsageError(f"--host {host} is reachable beyond this machine: add --api-auth USER:PASSWORD, "
                         "or --no-auth to serve it to anyone who can reach it")
