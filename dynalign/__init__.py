"""dynalign: record and analyse how learning rules (backprop, feedback alignment and its
relatives) learn."""

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("dynalign")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"

#: public names and the modules they live in, imported on first use: readers pull in xarray
#: and zarr, which `dynalign --help` and the config have no use for
_LAZY = {"open_run": ".reader", "load_spec": ".spec", "open_study": ".study_reader"}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(_LAZY[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


def run_study(spec, out, **kwargs):
    """Run a study spec (a path or a loaded spec) into ``out``; see :mod:`dynalign.sweep`."""
    from .spec import load_spec
    from .sweep import run_study as run

    return run(load_spec(spec) if not hasattr(spec, "points") else spec, out, **kwargs)


__all__ = ["__version__", "load_spec", "open_run", "open_study", "run_study"]
