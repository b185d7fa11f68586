"""The CLI's own fixtures: the arguments a command parses to, without rendering."""

import pytest
from cli_helpers import Parsed  # tests/support, on the path from the root conftest


@pytest.fixture
def parse(monkeypatch, no_defaults_file):
    """parse(*argv): the arguments typer gives a rendering command for argv (any exit is an AssertionError)."""
    from sd_cli.cli import request_builder
    from sd_cli.cli.app import main

    def fake_build_request(mode, args):
        raise Parsed(mode, {k: v for k, v in args.items() if k != "ctx"})

    monkeypatch.setattr(request_builder, "build_request", fake_build_request)

    def run(*argv) -> dict:
        try:
            main([str(a) for a in argv])
        except Parsed as parsed:
            return parsed.args[1]
        except SystemExit as done:
            raise AssertionError(f"exit {done.code}") from None
        raise AssertionError("the command ran without building a request")

    return run


@pytest.fixture
def no_defaults_file(monkeypatch, tmp_path):
    """No defaults file and no $SD_CLI_CKPT: an empty config folder."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.delenv("SD_CLI_DEFAULTS", raising=False)
    monkeypatch.delenv("SD_CLI_CKPT", raising=False)
    return tmp_path / "config" / "sd-cli" / "defaults.toml"
