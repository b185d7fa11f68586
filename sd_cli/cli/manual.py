"""Every subcommand's help at once: `sd-cli --help-all` (the --help texts one after another) and
`sd-cli man` (a troff man page). Both read the commands' own parameters, panels and examples, the
ones --help prints, so neither can drift from the options.

No torch here: help must stay fast.
"""

from __future__ import annotations

from datetime import date

from sd_cli.cli.help import EXAMPLES, OTHER_SPELLINGS_TITLE, own_names
from sd_cli.cli.options import PANELS

GENERAL_PANEL = "Options"  # where typer puts an option without a panel


def print_help_all(root_ctx) -> None:
    """`sd-cli --help`, then `sd-cli COMMAND --help` for each subcommand, each under a rule naming it."""
    from typer import rich_utils

    console = rich_utils._get_rich_console()  # typer's own, as the helps themselves print
    group = root_ctx.command
    console.print(group.get_help(root_ctx) or "", end="")
    for name, command in group.commands.items():
        if getattr(command, "hidden", False):
            continue
        console.rule(f"sd-cli {name}")
        ctx = command.make_context(name, [], parent=root_ctx, resilient_parsing=True)
        command.get_help(ctx)  # typer's rich help prints as it formats


def man_page(root_ctx, version: str) -> str:
    """The man page of sd-cli and every subcommand, as troff (man(7) macros)."""
    group = root_ctx.command
    lines = [f'.TH SD-CLI 1 "{date.today().isoformat()}" "sd-cli {version}" "User Commands"',
             ".SH NAME", f"sd-cli \\- {_text(_first_line(group.help))}",
             ".SH SYNOPSIS", ".B sd-cli", "\\fICOMMAND\\fR [\\fIOPTIONS\\fR] [\\fIPROMPT\\fR]",
             ".SH COMMANDS"]
    commands = {name: command for name, command in group.commands.items() if not getattr(command, "hidden", False)}
    for name, command in commands.items():
        lines += [".TP", f"\\fB{name}\\fR", _text(_first_line(command.help))]
    lines += [".SH OPTIONS"] + _options(p for p in group.params if not getattr(p, "hidden", False))
    for name, command in commands.items():
        lines += _command_section(name, command, root_ctx)
    lines += [".SH SEE ALSO", "The documentation in the docs/ folder of sd_cli's source: usage.md, automation.md, cli-help.md."]
    return "\n".join(lines) + "\n"


def _command_section(name: str, command, root_ctx) -> list[str]:
    lines = [f".SH SD-CLI {name.upper()}", ".B sd-cli " + name,
             "[\\fIOPTIONS\\fR]" + (" [\\fIPROMPT\\fR]" if _arguments(command) else "")]
    for paragraph in (command.help or "").strip().split("\n\n"):
        lines += [".PP", _text(" ".join(paragraph.split()))]
    shown = [p for p in command.params if not getattr(p, "hidden", False)]
    for argument in _arguments(command):
        lines += [".TP", f"\\fI{(argument.metavar or argument.name.upper())}\\fR", _text(getattr(argument, "help", "") or "")]
    options = [p for p in shown if p.param_type_name == "option"]
    for panel in _panels(options):
        lines += [f".SS {_text(panel)}"] + _options(p for p in options if _panel(p) == panel)
    others = [(p.opts[0], [n for n in p.opts if n not in own_names(p.opts)]) for p in options]
    others = [(own, names) for own, names in others if names]
    if others:
        lines += [f".SS {_text(OTHER_SPELLINGS_TITLE)}"]
        for own, names in others:
            lines += [".TP", _bold(own), _text(", ".join(names))]
    if EXAMPLES.get(name):
        lines += [".SS Examples"]
        for example in EXAMPLES[name]:
            lines += [".PP", ".nf", _text(example), ".fi"]
    return lines


def _options(params) -> list[str]:
    lines = []
    for param in params:
        names = ", ".join(_bold(n) for n in own_names(param.opts))
        if param.metavar and not getattr(param, "is_flag", False):
            names += f" \\fI{_text(param.metavar)}\\fR"
        lines += [".TP", names, _text(_help_with_default(param))]
    return lines


def _help_with_default(param) -> str:
    text = (getattr(param, "help", "") or "").replace("\\[", "[")
    default = param.default
    if getattr(param, "show_default", True) is not False and not getattr(param, "is_flag", False) \
            and default not in (None, "", ()) and not callable(default):
        text += f" [default: {getattr(default, 'value', default)}]"
    return text


def _arguments(command) -> list:
    return [p for p in command.params if p.param_type_name == "argument"]


def _panel(param) -> str:
    return getattr(param, "rich_help_panel", None) or GENERAL_PANEL


def _panels(options) -> list[str]:
    """The panels the options use, in --help's order."""
    used = dict.fromkeys(_panel(p) for p in options)
    return sorted(used, key=lambda panel: PANELS.index(panel) if panel in PANELS else -1)


def _first_line(text: str | None) -> str:
    return (text or "").strip().split("\n\n", 1)[0].replace("\n", " ")


def _bold(name: str) -> str:
    return f"\\fB{_text(name)}\\fR"


def _text(text: str) -> str:
    """Text safe in troff: backslashes and hyphens escaped, other alphabets as \\[uXXXX], no line taken for a request."""
    escaped = text.replace("\\[", "[").replace("\\", "\\e").replace("-", "\\-")
    escaped = "".join(c if ord(c) < 128 else f"\\[u{ord(c):04X}]" for c in escaped)  # troff reads ASCII: σ is \[u03C3]
    lines = [line.strip() for line in escaped.splitlines()] or [""]
    return "\n".join("\\&" + line if line.startswith((".", "'")) else line for line in lines)
