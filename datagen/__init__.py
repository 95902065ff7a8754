"""Data generation: capture contract, builtin renderer, manifests, planning and tiling into the block store."""
from importlib.metadata import PackageNotFoundError, version

from qw.datagen.errors import DISTRIBUTION

try:
    __version__ = version(DISTRIBUTION)
except PackageNotFoundError:  # running from a source tree that was not pip-installed
    __version__ = "0.0.0+src"
