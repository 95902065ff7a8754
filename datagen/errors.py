"""The one exception type for user-facing problems.

A `QwError` is printed by the CLI as a single line (no traceback unless --debug) and exits with `exit_code`.
Messages name the file and the problem: ``"captures/kite/s1/color/000003.exr: missing channel 'G'"``.
"""

from __future__ import annotations

import importlib
from types import ModuleType


class QwError(Exception):
    """A problem the user can fix: bad input, bad manifest, missing tool."""

    exit_code = 2


class CaptureError(QwError):
    """A capture directory or file violates the `qw-capture/1` contract."""

    exit_code = 1


DISTRIBUTION = "qw-taa"  # the name on the package index: `pip install qw-taa[onnx]`; the import and command are `qw`


def missing_extra(module: str, extra: str, purpose: str) -> str | None:
    """None when the optional dependency `module` imports; else one line naming the extra that installs it."""
    try:
        importlib.import_module(module)
    except ImportError:
        return (f"{purpose} needs the '{extra}' extra ({module} is not installed): "
                f"pip install '{DISTRIBUTION}[{extra}]'")
    return None


def require_extra(module: str, extra: str, purpose: str) -> ModuleType:
    """The optional dependency `module`, or a QwError naming the extra that installs it."""
    problem = missing_extra(module, extra, purpose)
    if problem:
        raise QwError(problem)
    return importlib.import_module(module)
