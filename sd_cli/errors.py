"""The two kinds of error a user can see, turned into one line and an exit code by the CLI."""


class SdCliError(Exception):
    """A failure at run time (exit code 1): the message says what went wrong and what to do."""

    exit_code = 1


class UsageError(SdCliError):
    """The command line or its inputs are wrong (exit code 2)."""

    exit_code = 2


class CheckpointError(SdCliError):
    """A checkpoint file is missing, unreadable, unsafe or does not match its config."""


class OutputError(SdCliError):
    """An output file or folder cannot be written (disk full, no permission): always stops the run."""


class NumericsError(SdCliError):
    """The model produced NaN or inf: no image is saved for it."""


class PartialFailure(SdCliError):
    """Some images failed under --on-error continue, the others were written (exit code 3)."""

    exit_code = 3
