"""The `sd-cli` command: its subcommands and entry point; no tensor code, no torch import at module level.

The flags are declared in sd_cli.cli.options and turned into a RunRequest by sd_cli.cli.request_builder.
"""

import inspect
import sys
from typing import Optional

import typer

from sd_cli.cli import options as opt
from sd_cli import log
from sd_cli.errors import SdCliError

app = typer.Typer(
    name="sd-cli",
    help="Stable Diffusion from the command line: original checkpoints and configs, safe loading, faithful numerics.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _render_command(mode: str, own_options, after_sampling=None):
    """Register subcommand `mode` with the options every rendering command shares.

    Typer reads a command's options from its signature, so the shared ones are written once (three
    functions in cli_options) and joined here with the command's own: `own_options` after the prompt,
    `after_sampling` after the sampling options. The docstring of `own_options` is the help text.
    """
    parts = [opt.leading_options, own_options, opt.sampling_options, after_sampling, opt.run_options]
    params = [p for part in parts if part is not None for p in inspect.signature(part).parameters.values()]

    def command(**args):
        from sd_cli.cli.request_builder import build_request
        from sd_cli.run.render import run

        log.set_quiet(args["quiet"])  # before anything is logged, flag checks included
        from sd_cli.serve.client import chosen_server, run_remote

        server = chosen_server(mode, args)
        request = build_request(mode, args)
        if server:
            run_remote(request, server)
        else:
            run(request)

    command.__signature__ = inspect.Signature(params)
    command.__annotations__ = {p.name: p.annotation for p in params}
    command.__doc__ = own_options.__doc__
    app.command(mode)(command)


_render_command("txt2img", opt.txt2img_options, after_sampling=opt.txt2img_size_options)
_render_command("img2img", opt.img2img_options)
_render_command("inpaint", opt.inpaint_options)
_render_command("depth2img", opt.depth2img_options)


@app.command()
def info(images: opt.ImagesArg, json_out: opt.InfoJsonOpt = False):
    """Print the generation parameters recorded in images (exit 1 if one has none)."""
    import json

    from sd_cli.files.reading import info_record, read_infotext

    failed = 0
    for path in images:
        try:
            text = json.dumps(info_record(path), ensure_ascii=False) if json_out else read_infotext(path)
        except SdCliError as err:
            log.error(str(err))
            failed += 1
            continue
        print(text if json_out or len(images) == 1 else f"{path}:\n{text}\n", flush=True)
    if failed:
        raise typer.Exit(1)


@app.command()
def verify(images: opt.ImagesArg, json_out: opt.InfoJsonOpt = False):
    """Tell which known invisible watermark images carry: exit 0 when every image has one, 1 otherwise."""
    import json

    from sd_cli.files.reading import describe_verify, verify_record

    unmarked = 0
    for path in images:
        try:
            record = verify_record(path)
        except SdCliError as err:
            log.error(str(err))
            unmarked += 1
            continue
        unmarked += record["watermark"] is None
        print(json.dumps(record) if json_out else describe_verify(record), flush=True)
    if unmarked:
        raise typer.Exit(1)


def _register_serve() -> None:
    from sd_cli.serve.command import serve_command

    app.command("serve")(serve_command)


_register_serve()


def main(argv: Optional[list[str]] = None) -> None:
    """Entry point: one line per error, exit codes 0 / 1 failure / 2 usage / 130 interrupted."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv:
        argv = ["--help"]
    debug = "--debug" in argv
    try:
        code = app(args=argv, prog_name="sd-cli", standalone_mode=False)
        if code == 130:  # typer turns Ctrl-C into Exit(130), which comes back as a return value here
            _fail("interrupted", 130)
        if isinstance(code, int) and code:  # typer.Exit(code) likewise
            sys.exit(code)
    except typer.Exit as done:
        sys.exit(done.exit_code)
    except typer.Abort:
        _fail("interrupted", 130)
    except _usage_error_class() as err:
        _fail(err.format_message(), 2)
    except SdCliError as err:
        if debug:
            raise
        _fail(str(err), err.exit_code)
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except Exception as err:  # an sd_cli bug or an environment problem: still one line unless --debug
        if debug:
            raise
        _fail(f"unexpected {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''} (rerun with --debug for details)", 1)


def _usage_error_class():
    """Typer ships its own copy of click; its UsageError lives there (click's in older typer)."""
    try:
        from typer._click.exceptions import UsageError as ParserUsageError
    except ImportError:
        from click import UsageError as ParserUsageError
    return ParserUsageError


def _fail(message: str, code: int) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(code)
