"""The command line: the typer app and its subcommands (app.py), one declaration per flag
(options.py), parsed flags turned into a RunRequest with every flag check (request_builder.py),
and the original scripts' command lines with their defaults (original_scripts.py). No tensor code
and no torch import at module level, so `sd-cli --help` stays fast."""
