"""The one exception type for user-facing problems.

A `QwError` is printed by the CLI as a single line (no traceback unless --debug) and exits with `exit_code`.
Messages name the file and the problem: ``"captures/kite/s1/color/000003.exr: missing channel 'G'"``.
"""


class QwError(Exception):
    """A problem the user can fix: bad input, bad manifest, missing tool."""

    exit_code = 2


class CaptureError(QwError):
    """A capture directory or file violates the `qw-capture/1` contract."""

    exit_code = 1
