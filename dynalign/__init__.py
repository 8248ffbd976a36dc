"""dynalign: record and analyse how learning rules (backprop, feedback alignment and its
relatives) learn."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("dynalign")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"

from .reader import open_run  # noqa: E402
from .spec import load_spec  # noqa: E402
from .study_reader import open_study  # noqa: E402


def run_study(spec, out, **kwargs):
    """Run a study spec (a path or a loaded spec) into ``out``; see :mod:`dynalign.sweep`."""
    from .sweep import run_study as run

    return run(load_spec(spec) if not hasattr(spec, "points") else spec, out, **kwargs)


__all__ = ["__version__", "load_spec", "open_run", "open_study", "run_study"]
