"""What a command-line run can end with, shared by every `scegg` command.

A user's mistake (a missing file, a model without a backbone given pictures, a bad flag value)
is not a bug: it is raised as :class:`UserError` with the cause and what to do about it, and the
command line prints those two lines and exits with :data:`EXIT_ERROR` instead of a traceback
(a traceback only with ``--verbose``).
"""
from __future__ import annotations

EXIT_OK = 0
EXIT_SOME_INPUTS_FAILED = 1  # the run finished, and some inputs got an error row
EXIT_ERROR = 2  # the run could not start (a user mistake, bad arguments) or died


class UserError(Exception):
    """A mistake the user can fix: ``cause`` says what is wrong, ``remedy`` what to do."""

    def __init__(self, cause: str, remedy: str = "") -> None:
        super().__init__(cause if not remedy else f"{cause}\n{remedy}")
        self.cause = cause
        self.remedy = remedy
