"""Why the server will not render a request: the errors app.py answers with 422 and 413."""

from sd_cli.errors import UsageError


class Refused(UsageError):
    """The request asks for something sd_cli does not do, or past a limit (422)."""


class TooLarge(Refused):
    """A size past a limit of the server (413)."""
