"""Helpers for the CLI tests that run sd-cli in this process."""


class Parsed(BaseException):
    """Raised by the stand-in build_request: the flags parsed, nothing rendered (not an Exception, which
    sd-cli's main would report as a bug)."""


def cli(capsys, *argv) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `sd-cli ARGV` run in this process."""
    from sd_cli.cli.app import main

    try:
        main([str(a) for a in argv])
        code = 0
    except SystemExit as done:
        code = done.code or 0
    out, err = capsys.readouterr()
    return code, out, err
