"""How `sd-cli COMMAND --help` reads: panels in a fixed order, each option under its own names,
the other tools' spellings of it in one panel after them, then a few examples.

An option's own names are its first long name and its one-letter switches (`--height`, `-H`); every
other name (`--H`, `--ddim_steps`, `--cfg_scale`) is another tool's spelling of the same option.
No torch import here: `--help` must stay fast.
"""

from contextlib import contextmanager

from typer.core import TyperCommand, TyperGroup

from sd_cli.cli.options import AUTOMATION, PANELS

OTHER_SPELLINGS_TITLE = "Other spellings: the original scripts, stable-diffusion.cpp, AUTOMATIC1111 (same meaning)"

# Each fits in 96 columns; the first needs no checkpoint of one's own (the built-in model draws shapes).
EXAMPLES = {
    "txt2img": (
        'sd-cli txt2img "a red circle on a blue background" --seed 7 -o circle.png',
        'sd-cli txt2img "a castle on a hill" -m v1-5.safetensors -W 512 -H 512 --sampler euler_a',
        'sd-cli txt2img --from-file prompts.txt --outdir out --name "{index:05}.png" --skip-existing',
    ),
    "img2img": (
        'sd-cli img2img "a watercolor painting" -i photo.png --strength 0.6 -o painted.png',
        'sd-cli img2img "winter" -i photo.png -m v1-5.safetensors --n-samples 2 --outdir out',
    ),
    "inpaint": (
        'sd-cli inpaint "a red door" --image house.png --mask door.png -m inpainting.ckpt -o door.png',
        'sd-cli inpaint "an evening sky" --image photo.png --outpaint 0,0,128,0 -o taller.png',
    ),
    "depth2img": (
        'sd-cli depth2img "a marble statue" -i person.png -m 512-depth-ema.ckpt -o statue.png',
        'sd-cli depth2img "bronze" -i person.png -m 512-depth-ema.ckpt --depth-map depth.png -o b.png',
    ),
    "info": ("sd-cli info circle.png", "sd-cli info --json out/*.png"),
    "verify": ("sd-cli verify circle.png", "sd-cli verify --json out/*.png"),
    "defaults": ("sd-cli defaults", "SD_CLI_DEFAULTS=ci-defaults.toml sd-cli defaults"),
    "models": ("sd-cli models", "sd-cli models --json"),
    "man": ("sd-cli man > sd-cli.1 && man ./sd-cli.1",),
}


class ReadableCommand(TyperCommand):
    """A typer command whose --help is sorted into panels and lists other spellings apart."""

    def get_help_option(self, ctx):
        option = super().get_help_option(ctx)
        if option is not None and any(getattr(p, "rich_help_panel", None) == AUTOMATION for p in self.params):
            option.rich_help_panel = AUTOMATION
        return option

    def format_help(self, ctx, formatter) -> None:
        epilog, self.epilog = self.epilog, None  # the examples go last, after the other spellings
        try:
            with _own_names_only(self, ctx) as other_spellings:
                super().format_help(ctx, formatter)
        finally:
            self.epilog = epilog
        _print_other_spellings(other_spellings)
        _print_examples(EXAMPLES.get(self.name, ()))


class ReadableGroup(TyperGroup):
    """`sd-cli --help`: no type shown for the flags."""

    def format_help(self, ctx, formatter) -> None:
        with _own_names_only(self, ctx):
            super().format_help(ctx, formatter)


def own_names(names: list[str]) -> list[str]:
    """The names --help shows an option under: its first long name and its one-letter switches."""
    first_long = next((name for name in names if name.startswith("--")), None)
    return [name for name in names if name == first_long or not name.startswith("--")]


@contextmanager
def _own_names_only(command, ctx):
    """While help is printed: options in panel order, under their own names; no type is shown for
    a flag (it takes no value) or an argument (its name says what it is)."""
    params = command.params
    shown = [param for param in command.get_params(ctx) if not getattr(param, "hidden", False)]
    saved = [(param, param.opts, param.__dict__.get("display_type_rich")) for param in shown]
    other_spellings = []
    for param in shown:
        hidden_names = [name for name in param.opts if name not in own_names(param.opts)]
        if hidden_names:
            other_spellings.append((param.opts[0], hidden_names))
        param.opts = own_names(param.opts)
        if getattr(param, "is_flag", False) or param.param_type_name == "argument":
            param.display_type_rich = lambda ctx: None
    command.params = sorted(params, key=_panel_rank)
    try:
        yield other_spellings
    finally:
        command.params = params
        for param, opts, own_display in saved:
            param.opts = opts
            param.__dict__.pop("display_type_rich", None)
            if own_display is not None:
                param.display_type_rich = own_display


def _panel_rank(param) -> int:
    panel = getattr(param, "rich_help_panel", None)
    return PANELS.index(panel) if panel in PANELS else -1


def _console():
    from typer import rich_utils

    return rich_utils._get_rich_console()  # typer's own, so widths and colours match its panels


def _print_other_spellings(other_spellings: list[tuple[str, list[str]]]) -> None:
    if not other_spellings:
        return
    from rich.panel import Panel
    from rich.table import Table

    table = Table(show_header=False, box=None, padding=(0, 1), expand=True)
    for own, others in other_spellings:
        table.add_row(own, ", ".join(others))
    _console().print(Panel(table, title=OTHER_SPELLINGS_TITLE, title_align="left", border_style="dim"))


def _print_examples(examples: tuple[str, ...]) -> None:
    if not examples:
        return
    from rich.padding import Padding
    from rich.text import Text

    lines = Text("Examples:\n" + "\n".join(f"  {example}" for example in examples))
    _console().print(Padding(lines, (1, 1, 1, 1)))
