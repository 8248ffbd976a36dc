"""dynalign: record and analyse how learning rules (backprop, feedback alignment) learn."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("dynalign")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"

from .reader import open_run  # noqa: E402

__all__ = ["__version__", "open_run"]
