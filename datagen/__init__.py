"""Data generation: capture contract, builtin renderer, manifests, planning and tiling into the block store."""
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("qw")
except PackageNotFoundError:  # running from a source tree that was not pip-installed
    __version__ = "0.0.0+src"
