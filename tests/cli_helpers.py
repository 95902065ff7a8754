"""Shared helpers of tests that run the `qw` command as a real process or need a free local port."""

from __future__ import annotations

import socket
import subprocess


def one_line_error(result: subprocess.CompletedProcess, code: int = 2) -> str:
    """The stderr of a `qw` run that failed as a user error must: exit `code`, one line, `qw: error: ` first."""
    assert result.returncode == code, result.stdout + result.stderr
    assert result.stderr.startswith("qw: error: ") and result.stderr.count("\n") == 1, result.stderr
    return result.stderr


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (as of now)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
