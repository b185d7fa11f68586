"""`sd-cli serve`: check the settings, load the start model, then serve with uvicorn until Ctrl-C."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from sd_cli import log
from sd_cli.fields import LORA_DIR
from sd_cli.errors import SdCliError, UsageError
from sd_cli.serve.settings import Limits, Settings, check_exposure, parse_credentials

INSTALL_HINT = 'pip install "sd-cli[serve]"'


def settings_from(args: dict) -> Settings:
    credentials = parse_credentials(args["api_auth"])
    check_exposure(args["host"], credentials, args["no_auth"])
    if not 0 < args["port"] < 65536:
        raise UsageError(f"--port {args['port']} must be 1 to 65535")
    limits = Limits(max_pixels=_at_least("--max-pixels", args["max_pixels"]),
                    max_steps=_at_least("--max-steps", args["max_steps"]),
                    max_images=_at_least("--max-images", args["max_images"]),
                    max_batch=_at_least("--max-batch", args["max_batch"]),
                    max_queue=_at_least("--max-queue", args["max_queue"]),
                    max_body_bytes=_at_least("--max-body-mb", args["max_body_mb"]) * 1024 * 1024)
    return Settings(host=args["host"], port=args["port"], checkpoint=args["ckpt"],
                    model_dirs=tuple(args["models_dir"] or (Path("checkpoints"),)), lora_dir=args["lora_dir"],
                    embeddings=args["embeddings"], outdir=args["outdir"], device=args["device"],
                    precision=args["precision"], credentials=credentials, cors_origins=tuple(args["cors_origin"] or ()),
                    loaded_models=_at_least("--loaded-models", args["loaded_models"]), limits=limits)


def _at_least(flag: str, value: int, minimum: int = 1) -> int:
    if value < minimum:
        raise UsageError(f"{flag} must be at least {minimum}, got {value}")
    return value


def serve(settings: Settings) -> None:
    uvicorn = _require_server_packages()
    check_port_free(settings.host, settings.port)  # before the model load, not after it
    from sd_cli.serve.app import create_app

    app = create_app(settings)
    log.info("loading the start model")
    app.state.server.cache.session(app.state.server.current, None)  # the first request pays no load
    log.info(f"serving AUTOMATIC1111's API on http://{settings.host}:{settings.port}/sdapi/v1 "
             f"({'auth required' if settings.credentials else 'no auth'}); Ctrl-C stops")
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning")


def check_port_free(host: str, port: int) -> None:
    import socket

    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: a closing socket is no obstacle
            probe.bind((host, port))
    except OSError as err:
        raise SdCliError(f"cannot listen on {host}:{port} ({err.strerror or err}); "
                         "stop what uses it or pick another --port") from None


def _require_server_packages():
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError as err:
        raise SdCliError(f"sd-cli serve needs {err.name}, which is not installed: {INSTALL_HINT}") from None
    return uvicorn


# -- the command's flags (typer reads them from the signature) ---------------------------------------

_defaults = Limits()


def serve_command(
    host: Annotated[str, typer.Option("--host", metavar="HOST", help="Address to listen on; beyond loopback it needs --api-auth or --no-auth.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", metavar="N", help="TCP port (AUTOMATIC1111's is 7860).")] = 7860,
    ckpt: Annotated[Optional[Path], typer.Option("--ckpt", metavar="PATH", help="Model loaded at start; default: sd_cli's own small model.")] = None,
    models_dir: Annotated[Optional[list[Path]], typer.Option("--models-dir", metavar="DIR", help="Folder of checkpoints clients may switch to by name (repeatable; default: checkpoints).")] = None,
    lora_dir: Annotated[Path, typer.Option("--lora-dir", metavar="DIR", help="Folder of the LoRAs that <lora:name:w> can name.")] = LORA_DIR,
    embeddings: Annotated[Optional[Path], typer.Option("--embeddings", metavar="DIR", help="Textual inversion folder; default: checkpoints/embeddings if it exists.", show_default=False)] = None,
    outdir: Annotated[Path, typer.Option("--outdir", metavar="DIR", help="Where save_images writes (and nowhere else).")] = Path("outputs/serve"),
    api_auth: Annotated[Optional[list[str]], typer.Option("--api-auth", metavar="USER:PASSWORD", help="USER:PASSWORD for HTTP basic auth (repeatable, or comma-separated).")] = None,
    no_auth: Annotated[bool, typer.Option("--no-auth", help="Serve a non-loopback --host without auth, on purpose.")] = False,
    cors_origin: Annotated[Optional[list[str]], typer.Option("--cors-origin", metavar="URL", help="Browser origin allowed to call the API (repeatable), e.g. http://localhost:8000.")] = None,
    device: Annotated[str, typer.Option("--device", metavar="NAME", help="auto, cpu, cuda, cuda:N or mps.")] = "auto",
    precision: Annotated[str, typer.Option("--precision", metavar="NAME", help="auto (fp16 on CUDA, fp32 elsewhere), fp32, fp16, bf16.")] = "auto",
    loaded_models: Annotated[int, typer.Option("--loaded-models", metavar="N", help="Checkpoints kept loaded; switching back to one costs no load.")] = 2,
    max_pixels: Annotated[int, typer.Option("--max-pixels", metavar="N", help="Largest width*height of an image (hires fix's final size included).")] = _defaults.max_pixels,
    max_steps: Annotated[int, typer.Option("--max-steps", metavar="N", help="Most sampling steps per request.")] = _defaults.max_steps,
    max_images: Annotated[int, typer.Option("--max-images", metavar="N", help="Most images (batch_size*n_iter) per request.")] = _defaults.max_images,
    max_batch: Annotated[int, typer.Option("--max-batch", metavar="N", help="Largest batch_size.")] = _defaults.max_batch,
    max_queue: Annotated[int, typer.Option("--max-queue", metavar="N", help="Requests waiting behind the running one; more get 429.")] = _defaults.max_queue,
    max_body_mb: Annotated[int, typer.Option("--max-body-mb", metavar="N", help="Largest request body in MiB, base64 images included; more get 413.")] = _defaults.max_body_bytes // (1024 * 1024),
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only warnings and errors on stderr.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False,
):
    """Serve AUTOMATIC1111's API (/sdapi/v1) with the model kept loaded."""
    log.set_quiet(quiet)
    serve(settings_from(dict(locals())))
