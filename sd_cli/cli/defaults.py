"""Defaults set once: a TOML file of option values, shared and per subcommand.

    # ~/.config/sd-cli/defaults.toml, or the file $SD_CLI_DEFAULTS names
    ckpt = "checkpoints/v1-5-pruned-emaonly.safetensors"   # every rendering subcommand
    steps = 30
    [txt2img]
    sampler = "euler_a"
    outdir = "renders"

Keys are option names without the dashes, in any of their spellings (`n-samples`, `n_samples`,
`cfg_scale`). The values become click's default map, so click's own order decides:
the command line, then $SD_CLI_CKPT (the checkpoint alone), then the file's [subcommand] table,
then its shared keys, then sd_cli's built-in defaults. Every key and value is checked when the file
is read, and an error names the file, the key and what to do.
"""

import os
import sys
from pathlib import Path

from sd_cli.errors import UsageError

ENV_FILE = "SD_CLI_DEFAULTS"
ENV_CKPT = "SD_CLI_CKPT"
RENDER_COMMANDS = ("txt2img", "img2img", "inpaint", "depth2img")


def defaults_file() -> tuple[Path | None, str]:
    """The defaults file in force and why: named by $SD_CLI_DEFAULTS, or found in the config folder."""
    named = os.environ.get(ENV_FILE)
    if named:
        path = Path(named).expanduser()
        if not path.is_file():
            raise UsageError(f"${ENV_FILE} names {path}, which is not a file; create it or unset {ENV_FILE}")
        return path, f"named by ${ENV_FILE}"
    config_home = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    path = config_home / "sd-cli" / "defaults.toml"
    return (path, "found in the config folder") if path.is_file() else (None, "none found")


def default_map(commands: dict) -> dict:
    """click's default map ({subcommand: {parameter name: value}}) from the defaults file, checked."""
    return {command: {name: value for name, (value, _section) in values.items()}
            for command, values in _file_values(commands).items()}


def _file_values(commands: dict) -> dict:
    """{subcommand: {parameter name: (value, "shared" or "[subcommand]")}}; {} without a file.

    A shared key applies to the subcommands that have the option (`strength` is not txt2img's)."""
    path, _why = defaults_file()
    if path is None:
        return {}
    shared, tables = _split(_read(path), path)
    for key in shared:
        if not any(_param(key, commands[command]) for command in RENDER_COMMANDS):
            raise UsageError(f"defaults file {path}: unknown key {key!r}{_suggestion(key, commands['txt2img'])}")
    values = {}
    for command in RENDER_COMMANDS:
        own = {k: v for k, v in shared.items() if _param(k, commands[command])}
        values[command] = {name: (value, "shared") for name, value in
                           _checked(own, commands[command], path, "shared key").items()}
        values[command].update({name: (value, f"[{command}]") for name, value in
                                _checked(tables.get(command, {}), commands[command], path, f"[{command}]").items()})
    return values


def checkpoints(commands: dict) -> list[str]:
    """The defaults file's ckpt values, shared and per subcommand (`sd-cli models` lists their folders)."""
    named = (values.get("ckpt") for values in default_map(commands).values())
    return list(dict.fromkeys(str(ckpt) for ckpt in named if ckpt is not None))


def sources(commands: dict) -> list[tuple[str, str, object, str]]:
    """(subcommand, flag, value, where it comes from) for every default not sd_cli's own."""
    path, why = defaults_file()
    file_values = _file_values(commands)
    rows = []
    for command in RENDER_COMMANDS:
        for param in commands[command].params:
            envvar = getattr(param, "envvar", None)
            if envvar and os.environ.get(envvar):
                rows.append((command, param.opts[0], os.environ[envvar], f"${envvar}"))
            elif param.name in file_values.get(command, {}):
                value, section = file_values[command][param.name]
                rows.append((command, param.opts[0], value, f"{path} {section}"))
    return rows


def _read(path: Path) -> dict:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        try:
            import tomli as tomllib
        except ImportError:
            raise UsageError(f"reading {path} needs Python 3.11 or the tomli package (pip install tomli)") from None
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"cannot read defaults file {path}: {err}") from None
    except tomllib.TOMLDecodeError as err:
        raise UsageError(f"defaults file {path} is not valid TOML ({err}); fix it or set ${ENV_FILE} to another file") from None


def _split(data: dict, path: Path) -> tuple[dict, dict]:
    """(shared keys, {subcommand: its table})."""
    shared = {key: value for key, value in data.items() if not isinstance(value, dict)}
    tables = {key: value for key, value in data.items() if isinstance(value, dict)}
    unknown = sorted(set(tables) - set(RENDER_COMMANDS))
    if unknown:
        raise UsageError(f"defaults file {path}: unknown table [{unknown[0]}]; the tables are "
                         f"{', '.join(f'[{c}]' for c in RENDER_COMMANDS)}")
    return shared, tables


def _param(key: str, command):
    """The option a file key names: any long spelling of it without the dashes."""
    wanted = {"--" + key, "--" + key.replace("_", "-")}
    return next((param for param in command.params if wanted & set(param.opts)), None)


def _checked(keys: dict, command, path: Path, section: str) -> dict:
    """{parameter name: value} for a section's keys; UsageError for an unknown key or a bad value."""
    values = {}
    for key, value in keys.items():
        param = _param(key, command)
        if param is None:
            raise UsageError(f"defaults file {path}: {section} has unknown key {key!r}{_suggestion(key, command)}")
        values[param.name] = _value(param, value, command, f"defaults file {path}: {section} {key}")
    return values


def _value(param, value, command, where: str):
    """The value as the option would take it from the command line (a list for a repeatable one)."""
    import typer

    if param.multiple and not isinstance(value, list):
        value = [value]
    try:
        value = param.process_value(typer.Context(command), value)
    except Exception as err:  # click's BadParameter, from typer's own copy of click
        raise UsageError(f"{where} = {value!r}: {getattr(err, 'message', err)}") from None
    if isinstance(value, Path):
        return value.expanduser()
    return [v.expanduser() if isinstance(v, Path) else v for v in value] if isinstance(value, (list, tuple)) else value


def _suggestion(key: str, command) -> str:
    from sd_cli.cli.suggestions import suggestions

    close = suggestions("--" + key, [param.opts for param in command.params])
    return f"; did you mean {' or '.join(c.lstrip('-') for c in close)}?" if close else "; see --help for the options"


def print_sources(commands: dict) -> None:
    """`sd-cli defaults`: where each default in force comes from."""
    path, why = defaults_file()
    print(f"defaults file: {path} ({why})" if path else f"defaults file: none (put one at "
          f"{Path(os.environ.get('XDG_CONFIG_HOME') or '~/.config') / 'sd-cli' / 'defaults.toml'} or set ${ENV_FILE})")
    rows = sources(commands)
    for command, flag, value, where in rows:
        shown = " ".join(map(str, value)) if isinstance(value, list) else value
        print(f"{command} {flag} {shown}  ({where})")
    if not rows:
        print("no defaults set: every option has sd_cli's own default (sd-cli COMMAND --help)")
    sys.stdout.flush()
