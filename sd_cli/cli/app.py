"""The `sd-cli` command: its subcommands and entry point; no tensor code, no torch import at module level.

The flags are declared in sd_cli.cli.options and turned into a RunRequest by sd_cli.cli.request_builder.
"""

import inspect
import sys
from typing import Annotated, Optional

import typer

from sd_cli.cli import options as opt
from sd_cli.cli.help import ReadableCommand, ReadableGroup
from sd_cli import log
from sd_cli.errors import SdCliError

app = typer.Typer(
    name="sd-cli",
    help="Stable Diffusion from the command line: original checkpoints and configs, safe loading, faithful numerics.",
    no_args_is_help=True,
    add_completion=True,  # --install-completion, --show-completion (cli/completion.py)
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
    cls=ReadableGroup,
)


def _print_version(wanted: bool) -> None:
    if wanted:
        from sd_cli import __version__

        print(f"sd-cli {__version__}")
        raise typer.Exit()


def _print_help_all(ctx: typer.Context, wanted: bool) -> None:
    if wanted:
        from sd_cli.cli.manual import print_help_all

        print_help_all(ctx)
        raise typer.Exit()


@app.callback()
def _top_level(version: Annotated[bool, typer.Option("--version", help="Print the version and exit.", callback=_print_version,
                                                     is_eager=True)] = False,
               help_all: Annotated[bool, typer.Option("--help-all", help="Print every command's full help, one after another.",
                                                      callback=_print_help_all, is_eager=True)] = False) -> None:
    """The options of sd-cli itself; its help text is the Typer's above."""


def _render_command(mode: str, own_options, size_options=None, family_options=()):
    """Register subcommand `mode` with the options every rendering command shares.

    Typer reads a command's options from its signature, so the shared ones are written once (three
    functions in cli.options) and joined here with the command's own: `own_options` after the prompt
    and the model, then `size_options`, and last a model family's own (`family_options`: the SDXL
    refiner's). The docstring of `own_options` is the help text; --help sorts
    the options into panels (cli.help).
    """
    parts = [opt.leading_options, own_options, size_options, opt.sampling_options, opt.run_options, *family_options]
    params = [p for part in parts if part is not None for p in inspect.signature(part).parameters.values()]

    def command(**args):
        from sd_cli.cli.request_builder import build_request, set_threads
        from sd_cli.run.render import run

        from sd_cli.serve.client import chosen_server, run_remote

        with log.run_scope(quiet=args["quiet"]):  # before anything is logged, flag checks included
            log.set_progress(args["progress"].value)
            server = chosen_server(mode, args)
            request = build_request(mode, args)
            if server:
                run_remote(request, server)
                return
            set_threads(args["threads"])
            run(request)

    command.__signature__ = inspect.Signature(params)
    command.__annotations__ = {p.name: p.annotation for p in params}
    command.__doc__ = own_options.__doc__
    app.command(mode, cls=ReadableCommand)(command)


_render_command("txt2img", opt.txt2img_options, size_options=opt.txt2img_size_options,
                family_options=(opt.sdxl_size_options, opt.refiner_options))
_render_command("img2img", opt.img2img_options, family_options=(opt.sdxl_size_options, opt.refiner_options))
_render_command("inpaint", opt.inpaint_options)
_render_command("depth2img", opt.depth2img_options)


@app.command(cls=ReadableCommand)
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


@app.command(cls=ReadableCommand)
def verify(images: opt.ImagesArg, json_out: opt.VerifyJsonOpt = False):
    """Name the known invisible watermark images carry (exit 1 if one has none)."""
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


@app.command(cls=ReadableCommand)
def defaults():
    """Print the defaults in force (defaults file, $SD_CLI_CKPT) and where each comes from.

    The defaults file is TOML, named by $SD_CLI_DEFAULTS or found at
    $XDG_CONFIG_HOME/sd-cli/defaults.toml (~/.config/sd-cli/defaults.toml): keys are option names
    without the dashes (steps = 30, ckpt = "model.safetensors"), shared by the rendering
    subcommands, and a [txt2img] (or img2img, inpaint, depth2img) table for one of them. The
    command line wins over $SD_CLI_CKPT, which wins over the file.
    """
    from sd_cli.cli.defaults import print_sources

    print_sources(_click_commands())


@app.command(cls=ReadableCommand)
def models(json_out: opt.ModelsJsonOpt = False):
    """List the checkpoints sd-cli finds (here, checkpoints/, $SD_CLI_CKPT, the defaults file) and the built-in model.

    Each file's family is read from its key names (a .safetensors header, a .ckpt memory-mapped),
    its hash (AUTOMATIC1111's short sha256) shown when sd-cli has hashed the file before.
    """
    from sd_cli.cli.defaults import checkpoints
    from sd_cli.cli.listing import print_models

    print_models(checkpoints(_click_commands()), json_out)


@app.command(cls=ReadableCommand)
def man(ctx: typer.Context):
    """Print sd-cli's man page (troff): every command and option, as --help-all gives them."""
    from sd_cli import __version__
    from sd_cli.cli.manual import man_page

    sys.stdout.write(man_page(ctx.find_root(), __version__))


def _register_serve() -> None:
    from sd_cli.serve.command import serve_command

    app.command("serve", cls=ReadableCommand)(serve_command)


_register_serve()


def main(argv: Optional[list[str]] = None) -> None:
    """Entry point: one line per error, exit codes 0 / 1 failure / 2 usage / 130 interrupted."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv:
        argv = ["--help"]
    argv = _one_xy_per_axis(argv)
    debug = "--debug" in argv
    try:
        code = app(args=argv, prog_name="sd-cli", standalone_mode=False, default_map=_defaults_for(argv))
        if code == 130:  # typer turns Ctrl-C into Exit(130), which comes back as a return value here
            _fail("interrupted", 130)
        if isinstance(code, int) and code:  # typer.Exit(code) likewise
            sys.exit(code)
    except typer.Exit as done:
        sys.exit(done.exit_code)
    except typer.Abort:
        _fail("interrupted", 130)
    except _usage_error_class() as err:
        _fail(_usage_message(err), 2)
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


def _one_xy_per_axis(argv: list[str]) -> list[str]:
    """`--xy "steps=10,20" "scale=5,7.5"` as the parser takes it: `--xy steps=10,20 --xy scale=5,7.5`.

    AUTOMATIC1111 users write the axes one after another; the parser gives an option one value, so
    each axis word that follows --xy's value gets an --xy of its own (a word without FIELD= stays
    the prompt)."""
    from sd_cli.run.plot import looks_like_axis

    spread: list[str] = []
    in_axes = False  # the word before was --xy's value or one more axis
    for word in argv:
        if in_axes and looks_like_axis(word):
            spread += ["--xy", word]
            continue
        in_axes = word.startswith(("--xy=", "--xyz=")) or spread[-1:] in (["--xy"], ["--xyz"])
        spread.append(word)
    return spread


def _defaults_for(argv: list[str]) -> dict:
    """The defaults file's values, read only for a rendering subcommand (help and info never fail on it)."""
    from sd_cli.cli.defaults import RENDER_COMMANDS, default_map

    if argv[0] not in RENDER_COMMANDS:
        return {}
    return default_map(_click_commands())


def _click_commands() -> dict:
    import typer.main

    return typer.main.get_command(app).commands


def _usage_error_class():
    """Typer ships its own copy of click; its UsageError lives there (click's in older typer)."""
    try:
        from typer._click.exceptions import UsageError as ParserUsageError
    except ImportError:
        from click import UsageError as ParserUsageError
    return ParserUsageError


def _usage_message(err) -> str:
    """The parser's message, with sd_cli's own "did you mean" for an unknown long option."""
    typed, ctx = getattr(err, "option_name", None), err.ctx
    if type(err).__name__ != "NoSuchOption" or ctx is None or not str(typed).startswith("--"):
        return err.format_message()
    from sd_cli.cli.suggestions import unknown_option_message

    return unknown_option_message(typed, [p.opts + p.secondary_opts for p in ctx.command.get_params(ctx)])


def _fail(message: str, code: int) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(code)
