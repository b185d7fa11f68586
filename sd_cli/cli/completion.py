"""Shell completion (typer's: `sd-cli --install-completion`, `--show-completion`): --ckpt completes
the checkpoints sd_cli finds (loading/listing.py), --sampler every sampler name it accepts.

The callbacks run on every Tab press: no torch, and an unreadable defaults file only leaves its
folder out (a completion cannot print an error; the command itself reports the file).
"""

from sd_cli.errors import UsageError


def complete_checkpoint(ctx, incomplete: str) -> list[str]:
    from sd_cli.loading.listing import complete_checkpoint as names

    return names(incomplete, _defaults_checkpoints(ctx))


def complete_sampler(incomplete: str) -> list[tuple[str, str]]:
    from sd_cli.sampling.samplers import completion_names

    typed = incomplete.lower()
    return [(name, about) for name, about in completion_names().items() if name.lower().startswith(typed)]


def _defaults_checkpoints(ctx) -> list[str]:
    from sd_cli.cli.defaults import checkpoints

    try:
        return checkpoints(ctx.find_root().command.commands)
    except UsageError:
        return []
