"""The FastAPI application: AUTOMATIC1111's /sdapi/v1/* routes over the worker and the model cache.

Every error is JSON {"error": ..., "detail": ...} and never a traceback: 401 for missing or wrong
credentials (no detail), 413 for a body or image past the limits, 422 for a request sd_cli cannot
honour or that is malformed, 429 when the queue is full, 500 for a failure while rendering (its
one-line message, as the CLI prints it).
"""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPBasic, HTTPBasicCredentials
from starlette.exceptions import HTTPException

from sd_cli import __version__, log
from sd_cli.errors import SdCliError, UsageError
from sd_cli.serve import catalogue
from sd_cli.serve.limits import BodyLimit, BodyTooLarge
from sd_cli.serve.models import ModelCatalogue, SessionCache, UnknownModel
from sd_cli.serve.schemas import GenerationRequest, Img2ImgRequest, Txt2ImgRequest
from sd_cli.serve.settings import Settings
from sd_cli.serve.refusal import Refused, TooLarge
from sd_cli.serve.translate import Plan, lora_names_problem, plan
from sd_cli.serve.worker import QueueFull, Worker

DISCONNECT_POLL_S = 0.5  # how often a waiting request checks that its client is still there


@dataclass
class Server:
    settings: Settings
    catalogue: ModelCatalogue
    cache: SessionCache
    worker: Worker
    current: object  # models.Checkpoint: what options' sd_model_checkpoint names


def create_app(settings: Settings) -> FastAPI:
    server = Server(settings, ModelCatalogue(settings), SessionCache(settings), Worker(settings.limits.max_queue), None)
    server.current = server.catalogue.start
    app = FastAPI(title="sd-cli serve", version=__version__, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = server
    _add_middleware(app, settings)
    _add_error_handlers(app)
    auth = [Depends(_auth_check(settings.credentials))] if settings.credentials else []
    _add_routes(app, server, auth)
    return app


def _add_middleware(app: FastAPI, settings: Settings) -> None:
    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins), allow_methods=["*"],
                           allow_headers=["*"], allow_credentials=True)
    app.add_middleware(BodyLimit, max_bytes=settings.limits.max_body_bytes)


def error_body(error: str, detail) -> dict:
    return {"error": error, "detail": detail}


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError):
        problems = [_problem(e) for e in err.errors()]
        return JSONResponse(error_body("invalid request", "; ".join(problems)), status_code=422)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, err: HTTPException):
        if isinstance(err.__cause__, BodyTooLarge):  # a chunked body past the limit, seen while FastAPI read it
            return JSONResponse(error_body("Request Entity Too Large", str(err.__cause__)), status_code=413)
        return JSONResponse(error_body(_reason(err.status_code), err.detail), status_code=err.status_code,
                            headers=getattr(err, "headers", None))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, err: Exception):
        log.error(f"{request.method} {request.url.path}: unexpected {type(err).__name__}: {err}")
        return JSONResponse(error_body("internal error", f"unexpected {type(err).__name__}; see the server's log"),
                            status_code=500)


def _problem(error: dict) -> str:
    """One validation error as "field: what is wrong" (the body as a whole when it is not JSON)."""
    if error["type"] == "json_invalid":
        return f"the body is not valid JSON ({error.get('ctx', {}).get('error', 'malformed')})"
    where = ".".join(str(part) for part in error["loc"] if part != "body")
    return f"{where or 'body'}: {error['msg']}"


def _reason(status: int) -> str:
    from http import HTTPStatus

    return HTTPStatus(status).phrase


def _failure(err: Exception) -> HTTPException:
    """The HTTP answer to an error from planning or rendering."""
    if isinstance(err, TooLarge):
        return HTTPException(413, str(err))
    if isinstance(err, UnknownModel):
        return HTTPException(404, str(err))
    if isinstance(err, QueueFull):
        return HTTPException(429, "the render queue is full; retry later")
    if isinstance(err, UsageError):
        return HTTPException(422, str(err))
    if isinstance(err, SdCliError):
        return HTTPException(500, str(err))
    raise err


def _auth_check(credentials: dict[str, str]):
    basic = HTTPBasic(auto_error=False)

    def check(given: HTTPBasicCredentials | None = Depends(basic)) -> None:
        expected = credentials.get(given.username) if given is not None else None
        if expected is None or not secrets.compare_digest(given.password.encode(), expected.encode()):
            raise HTTPException(401, "", headers={"WWW-Authenticate": "Basic"})

    return check


def _add_routes(app: FastAPI, server: Server, auth: list) -> None:
    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    async def root():
        return {"name": "sd-cli serve", "version": __version__, "api": "/sdapi/v1"}

    @app.post("/sdapi/v1/txt2img", dependencies=auth)
    async def txt2img(body: Txt2ImgRequest, request: Request):
        return await _generate(server, body, request)

    @app.post("/sdapi/v1/img2img", dependencies=auth)
    async def img2img(body: Img2ImgRequest, request: Request):
        return await _generate(server, body, request)

    @app.get("/sdapi/v1/progress", dependencies=auth)
    async def progress(skip_current_image: bool = False):
        return server.worker.state.progress()

    @app.post("/sdapi/v1/interrupt", dependencies=auth)
    async def interrupt():
        server.worker.state.interrupt()
        return {}

    @app.post("/sdapi/v1/skip", dependencies=auth)
    async def skip():
        server.worker.state.skip()
        return {}

    @app.get("/sdapi/v1/options", dependencies=auth)
    async def get_options():
        return catalogue.options(server)

    @app.post("/sdapi/v1/options", dependencies=auth)
    async def set_options(body: dict, request: Request):
        return await _set_options(server, body, request)

    @app.post("/sdapi/v1/refresh-checkpoints", dependencies=auth)
    async def refresh_checkpoints():
        server.catalogue.refresh()
        return {}

    @app.post("/sdapi/v1/png-info", dependencies=auth)
    async def png_info(body: catalogue.PngInfoRequest):
        try:
            return catalogue.png_info(body.image, server.settings.limits)
        except Refused as err:
            raise _failure(err) from None

    for path, listing in catalogue.LISTINGS.items():
        app.add_api_route(f"/sdapi/v1/{path}", _listing(server, listing), methods=["GET"], dependencies=auth)


def _listing(server: Server, listing):
    async def endpoint():
        return listing(server)

    return endpoint


async def _generate(server: Server, body: GenerationRequest, request: Request):
    if body.model_extra:
        log.warn(f"{request.url.path}: ignoring unknown field(s) {', '.join(sorted(body.model_extra))}")
    try:
        work = plan(body, server.settings.limits)
        problem = lora_names_problem(body.prompt, server.settings.lora_dir)
        if problem:
            raise Refused(problem)
        checkpoint = server.catalogue.find(work.checkpoint) if work.checkpoint else None
    except SdCliError as err:
        raise _failure(err) from None
    result = await _run(server, request, lambda state: _render(server, work, checkpoint, state))
    return _answer(body, work, result)


def _render(server: Server, work: Plan, checkpoint, state):
    from sd_cli.serve.rendering import render_plan

    return render_plan(work, checkpoint or server.current, server.cache, server.settings, state)


def _answer(body: GenerationRequest, work: Plan, result) -> dict:
    from sd_cli.serve.images import b64
    from sd_cli.serve.rendering import info_json

    parameters = body.model_dump(exclude=set(body.model_extra or ()))
    if isinstance(body, Img2ImgRequest) and not body.include_init_images:
        parameters.update(init_images=None, mask=None)
    images = [b64(r.png) for r in result.images] if work.send_images else []
    return {"images": images, "parameters": parameters, "info": info_json(result, work)}


async def _set_options(server: Server, body: dict, request: Request):
    """Only sd_model_checkpoint changes anything; it loads that model (in the queue, after the renders
    already waiting). Other options are accepted and ignored, with a warning, as unknown fields."""
    others = sorted(k for k in body if k != "sd_model_checkpoint")
    if others:
        log.warn(f"POST /sdapi/v1/options: ignoring {', '.join(others)} (sd_cli honours sd_model_checkpoint only)")
    name = body.get("sd_model_checkpoint")
    if name is None:
        return {}
    if not isinstance(name, str):
        raise HTTPException(422, f"sd_model_checkpoint must be a checkpoint title, got {name!r}")
    try:
        checkpoint = server.catalogue.find(name)
    except UnknownModel as err:
        raise _failure(err) from None
    if checkpoint == server.current:  # clients post back the options they read: no need to queue
        return {}

    def switch(state):
        server.cache.session(checkpoint, None)  # loaded now, so the next render pays nothing
        server.current = checkpoint

    await _run(server, request, switch)
    return {}


async def _run(server: Server, request: Request, work):
    """Queue `work` and wait for it; a client that goes away cancels it."""
    try:
        future = server.worker.submit(work)
    except QueueFull as err:
        raise _failure(err) from None
    waiting = asyncio.wrap_future(future)
    while True:
        done, _ = await asyncio.wait({waiting}, timeout=DISCONNECT_POLL_S)
        if done:
            break
        if await request.is_disconnected():
            server.worker.cancel(future)
            log.info(f"{request.url.path}: the client went away; its request is cancelled")
            raise HTTPException(400, "the client disconnected; the request was cancelled")
    try:
        return await waiting
    except SdCliError as err:
        raise _failure(err) from None
