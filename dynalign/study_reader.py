"""Reading a study: a grid of configs x seeds, one run store per point, indexed by ``study.json``.

A study directory holds the manifest ``study.json`` (written by the sweep driver) and one run
store per (arm, seed) under ``runs/``. :func:`open_study` lines every run up along ``arm`` and
``seed`` (and, for a complete grid, one dimension per grid key instead of ``arm``): the
``steps`` and ``epochs`` groups of every run, lazily (dask), padded with NaN where runs differ
in length or are missing. The run store is the truth about a run (its status); the manifest is
the index, and says what a run that has no store yet is doing (pending, failed before it wrote).

A reproduction directory holds one study per finding (``finding-<N>/study.json``) and the
verdicts (``findings.json``).
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from .config import flatten
from .store import FINISHED, StoreError

MANIFEST = "study.json"
KIND = "dynalign-study"
FORMAT = 1
FINDINGS = "findings.json"
#: what a run is called when its store is missing although the manifest says it finished
MISSING = "missing"
#: a store that exists but cannot be opened
UNREADABLE = "unreadable"
#: keys that differ between the runs of one arm, never between arms
SEED_KEYS = ("train.seed",)
GROUPS = ("steps", "epochs")
_FIX = "give a study directory written by `dynalign sweep` (it holds study.json)"
_DAMAGED = "restore it, or run the spec again with `dynalign sweep SPEC --out NEW_DIR`"


# ----------------------------------------------------------------------------- the manifest


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The checked manifest of the study at ``path`` (StoreError, one line, for anything else)."""
    path = Path(path)
    if not path.exists():
        raise StoreError(f"{path} does not exist; {_FIX}")
    if not path.is_dir():
        raise StoreError(f"{path} is not a directory, so not a study; {_FIX}")
    file = path / MANIFEST
    if not file.is_file():
        raise StoreError(f"{path} has no {MANIFEST}, so it is not a study directory; {_FIX}")
    try:
        manifest = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise StoreError(
            f"{file} is damaged (not valid JSON: {err.msg} at line {err.lineno}); {_DAMAGED}"
        ) from None
    except (OSError, UnicodeDecodeError) as err:
        raise StoreError(f"{file} cannot be read ({type(err).__name__}: {err})") from None
    if not isinstance(manifest, dict) or manifest.get("kind") != KIND:
        kind = manifest.get("kind") if isinstance(manifest, dict) else type(manifest).__name__
        raise StoreError(
            f"{file} is not a dynalign study manifest (kind {kind!r}, expected {KIND!r}); {_FIX}"
        )
    if manifest.get("format") != FORMAT:
        raise StoreError(
            f"{file} has format {manifest.get('format')!r}; this dynalign reads format {FORMAT}: "
            f"open it with the dynalign version that wrote it ({manifest.get('dynalign_version')})"
        )
    _check_manifest(file, manifest)
    return manifest


def _check_manifest(file: Path, manifest: dict[str, Any]) -> None:
    def bad(what: str) -> StoreError:
        return StoreError(f"{file} is damaged ({what}); {_DAMAGED}")

    seeds = manifest.get("seeds")
    if not isinstance(seeds, list) or not all(_is_int(s) for s in seeds):
        raise bad("'seeds' is not a list of whole numbers")
    if len(set(seeds)) != len(seeds):
        raise bad("'seeds' repeats a seed")
    arms = manifest.get("arms")
    if not isinstance(arms, list) or not all(
        isinstance(a, dict) and isinstance(a.get("name"), str) for a in arms
    ):
        raise bad("'arms' is not a list of arms with names")
    names = [a["name"] for a in arms]
    if len(set(names)) != len(names):
        raise bad("two arms share a name")
    runs = manifest.get("runs", [])
    if not isinstance(runs, list) or not all(
        isinstance(r, dict)
        and r.get("arm") in names
        and _is_int(r.get("seed"))
        and isinstance(r.get("store"), str)
        for r in runs
    ):
        raise bad("'runs' holds an entry without a known arm, a seed and a store")
    for key in ("grid", "dims"):
        if manifest.get(key) is not None and not isinstance(manifest[key], dict):
            raise bad(f"'{key}' is not a table")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_study(path: str | Path) -> bool:
    """Whether ``path`` is a directory holding a ``study.json`` of kind dynalign-study."""
    file = Path(path) / MANIFEST
    try:
        return file.is_file() and json.loads(file.read_text(encoding="utf-8")).get("kind") == KIND
    except (OSError, ValueError, AttributeError):
        return False


def has_manifest(path: str | Path) -> bool:
    """Whether ``path`` is a directory with a ``study.json`` at all (damaged or not): what the
    commands branch on, so that a damaged manifest is named instead of the path being taken
    for a run store."""
    return (Path(path) / MANIFEST).is_file()


def is_reproduction(path: str | Path) -> bool:
    """Whether ``path`` is a reproduction directory (``findings.json`` or
    ``finding-*/study.json``)."""
    path = Path(path)
    if not path.is_dir() or (path / MANIFEST).exists():
        return False
    return (path / FINDINGS).is_file() or bool(reproduction_studies(path))


def reproduction_studies(path: str | Path) -> list[Path]:
    """The study directories of a reproduction, ``finding-<N>``, in order of N."""
    path = Path(path)
    found = [p.parent for p in path.glob(f"finding-*/{MANIFEST}")]

    def number(p: Path) -> tuple[int, str]:
        match = re.fullmatch(r"finding-(\d+)", p.name)
        return (int(match.group(1)) if match else 1 << 30, p.name)

    return sorted(found, key=number)


def run_entries(manifest: dict[str, Any]) -> dict[tuple[str, int], dict[str, Any]]:
    """Every (arm, seed) of the grid with its manifest entry (a pending one if it has none)."""
    given = {(r["arm"], int(r["seed"])): r for r in manifest.get("runs", [])}
    out = {}
    for arm in manifest["arms"]:
        for seed in manifest["seeds"]:
            key = (arm["name"], int(seed))
            out[key] = given.get(
                key,
                {
                    "arm": key[0],
                    "seed": key[1],
                    "store": f"runs/{key[0]}/seed-{key[1]}.zarr",
                    "status": "pending",
                },
            )
    return out


def study_runs(path: str | Path) -> list[tuple[str, int, Path]]:
    """``(arm, seed, store path)`` of every point of the study, arm by arm, seed by seed
    (stores not written yet included)."""
    path = Path(path)
    manifest = read_manifest(path)
    return [(a, s, path / e["store"]) for (a, s), e in run_entries(manifest).items()]


# ----------------------------------------------------------------------------- one run


def _empty(store: Path) -> bool:
    return store.is_dir() and not any(store.iterdir())


def open_point(study_dir: str | Path, entry: dict[str, Any]) -> tuple[str, str, xr.DataTree | None]:
    """``(status, message, tree)`` of one run of a study: its store opened lazily, or None.

    The store's own status wins over the manifest's; a store still marked running whose writer
    is gone is ``interrupted``. Without a store (or with an empty one) the manifest's status
    stands, unless it says the run finished (then: ``missing``); a store that does not open is
    ``unreadable``, with the reason as message.
    """
    from .reader import open_run
    from .writer_lock import describe_writer, writer_alive

    store = Path(study_dir) / entry["store"]
    said = str(entry.get("status") or "pending")
    if not store.exists() or _empty(store):
        if said in (*FINISHED, "interrupted"):
            return MISSING, f"the manifest says {said} but {store} is missing or empty", None
        return said, str(entry.get("message") or ""), None
    try:
        tree = open_run(store)
    except StoreError as err:
        return UNREADABLE, str(err), None
    status = str(tree.attrs.get("status", "unknown"))
    message = str(tree.attrs.get("message", "") or "")
    if status == "running" and writer_alive(store) is False:
        status = "interrupted"
        message = (
            f"its writer, {describe_writer(tree.attrs.get('writer'))}, is gone: the run was "
            "killed; the sweep resumes it"
        )
    return status, message, tree


# ----------------------------------------------------------------------------- arm labels


def short_name(key: str) -> str:
    """The last part of a dotted config key: ``rule.name`` -> ``rule``."""
    last = key.rsplit(".", 1)[-1]
    return key.split(".", 1)[0] if last == "name" or last == "kind" else last


def label(value: Any) -> str:
    """A config value as text (JSON for lists and tables)."""
    if isinstance(value, str):
        return value
    if isinstance(value, (list, dict)):
        return json.dumps(value, sort_keys=True)
    return str(value)


def coordinate(values: list[Any]) -> np.ndarray:
    """Values as a coordinate: numbers stay numeric, anything else (or a mix) becomes text."""
    if values and all(isinstance(v, bool) for v in values):
        return np.array(values, dtype=bool)
    if values and all(_is_int(v) for v in values):
        return np.array(values, dtype=np.int64)
    if values and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return np.array(values, dtype=float)
    return np.array([label(v) for v in values], dtype=object)


def _config_of(entry: dict[str, Any]) -> dict[str, Any] | None:
    text = entry.get("config")
    try:
        config = json.loads(text) if isinstance(text, str) else text
    except ValueError:
        return None
    return flatten(config) if isinstance(config, dict) else None


def arm_configs(manifest: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each arm's flat config (from its runs' configs in the manifest, the arm's overrides on
    top), without the keys that differ between seeds."""
    entries = run_entries(manifest)
    out = {}
    for arm in manifest["arms"]:
        name = arm["name"]
        config: dict[str, Any] = {}
        for seed in manifest["seeds"]:
            found = _config_of(entries[(name, int(seed))])
            if found is not None:
                config = found
                break
        overrides = arm.get("overrides")
        config.update(overrides if isinstance(overrides, dict) else {})
        out[name] = {k: v for k, v in config.items() if k not in SEED_KEYS}
    return out


def varying_keys(configs: dict[str, dict[str, Any]]) -> list[str]:
    """Config keys whose value differs between arms, sorted."""
    keys = sorted({k for c in configs.values() for k in c})
    return [k for k in keys if len({label(c.get(k)) for c in configs.values()}) > 1]


def arm_coordinates(manifest: dict[str, Any]) -> dict[str, np.ndarray]:
    """One coordinate per config key that varies between arms (grid keys first), by dotted key."""
    configs = arm_configs(manifest)
    grid = list((manifest.get("grid") or {}).keys())
    keys = grid + [k for k in varying_keys(configs) if k not in grid]
    return {k: coordinate([configs[a["name"]].get(k) for a in manifest["arms"]]) for k in keys}


def grid_dims(manifest: dict[str, Any]) -> dict[str, str] | None:
    """Grid key -> dimension name when the arms are the full cross of the manifest's grid (one
    arm per combination), else None."""
    grid = manifest.get("grid")
    if not grid or not all(isinstance(v, list) and v for v in grid.values()):
        return None
    short = manifest.get("dims") or {}
    dims = {k: str(short.get(k) or short_name(k)) for k in grid}
    if len(set(dims.values())) != len(dims) or {"seed", "step", "epoch", "layer"} & set(
        dims.values()
    ):
        dims = {k: k for k in grid}  # dotted keys never clash with each other or the axes
    combos = {tuple(label(v) for v in c) for c in itertools.product(*grid.values())}
    seen = []
    for arm in manifest["arms"]:
        labels = arm.get("labels") or {}
        if not isinstance(labels, dict) or set(labels) != set(grid):
            return None
        seen.append(tuple(label(labels[k]) for k in grid))
    if len(seen) != len(combos) or set(seen) != combos:
        return None
    return dims


# ----------------------------------------------------------------------------- open_study


def _have_dask() -> bool:
    return importlib.util.find_spec("dask") is not None


def _ordered_union(lists: list[list[Any]]) -> list[Any]:
    return list(dict.fromkeys(v for values in lists for v in values))


def _stack(
    datasets: dict[int, xr.Dataset], n_points: int, index_dims: tuple[str, ...]
) -> xr.Dataset:
    """The datasets of the present points along ``_point`` (0..n_points-1), NaN for absent
    points and for the steps/epochs/layers a run lacks; lazy where dask is installed."""
    if not datasets:
        return xr.Dataset(coords={"_point": np.arange(n_points)})
    full = {
        d: _ordered_union([list(ds[d].values) for ds in datasets.values() if d in ds.dims])
        for d in index_dims
    }
    for d in index_dims:
        if d in ("step", "epoch"):  # numbers: in order, whatever the runs held
            full[d] = np.array(sorted(full[d]), dtype=np.int64)
        else:
            full[d] = np.array([str(v) for v in full[d]], dtype=object)
    ready = []
    for ds in datasets.values():
        if _have_dask():
            ds = ds.chunk()
        for d in index_dims:
            if d in ds.dims:
                ds = ds.reindex({d: full[d]}, fill_value=np.nan)
        ready.append(ds)
    points = pd.Index(list(datasets), name="_point")
    stacked = xr.concat(
        ready,
        dim=points,
        join="outer",
        fill_value=np.nan,
        data_vars="all",
        coords="minimal",
        compat="override",
    )
    return stacked.reindex(_point=np.arange(n_points), fill_value=np.nan)


def _to_arm_seed(
    ds: xr.Dataset, arms: list[str], seeds: list[int], coords: dict[str, np.ndarray]
) -> xr.Dataset:
    """``_point`` (arm-major) unstacked into (arm, seed), with the arm coordinates."""
    index = pd.MultiIndex.from_product([arms, seeds], names=["arm", "seed"])
    ds = ds.assign_coords(xr.Coordinates.from_pandas_multiindex(index, "_point"))
    ds = ds.unstack("_point").reindex(arm=arms, seed=seeds)
    ds = ds.assign_coords(
        arm=("arm", np.array(arms, dtype=object)),
        seed=("seed", np.array(seeds, dtype=np.int64)),
        **{k: ("arm", v) for k, v in coords.items()},
    )
    return ds.transpose("arm", "seed", *_axes(ds))


def _axes(ds: xr.Dataset) -> list[str]:
    """The dims of a run's own data, in the order a run store has them."""
    return [d for d in ("step", "epoch", "layer") if d in ds.dims]


def _unstack_grid(ds: xr.Dataset, manifest: dict[str, Any], dims: dict[str, str]) -> xr.Dataset:
    """The ``arm`` dimension as one dimension per grid key (in the grid's value order); the arm
    names stay as the coordinate ``arm`` over the grid dimensions."""
    grid = manifest["grid"]
    labels = [a["labels"] for a in manifest["arms"]]
    values = {k: coordinate([lab[k] for lab in labels]) for k in grid}
    names = ds["arm"].values
    ds = ds.drop_vars([k for k in grid if k in ds.coords]).drop_vars("arm")
    index = pd.MultiIndex.from_arrays([values[k] for k in grid], names=list(dims.values()))
    ds = ds.assign_coords(xr.Coordinates.from_pandas_multiindex(index, "arm"))
    ds = ds.assign_coords(_arm_name=("arm", names)).unstack("arm")
    order = {dims[k]: coordinate(list(v)) for k, v in grid.items()}
    ds = ds.reindex(order).rename_vars({"_arm_name": "arm"})
    return ds.transpose(*dims.values(), "seed", *_axes(ds))


def open_study(path: str | Path, dims: str = "auto") -> xr.DataTree:
    """Open every run of the study at ``path`` as one lazy ``xarray.DataTree``.

    Groups ``steps`` (arm, seed, step, layer) and ``epochs`` (arm, seed, epoch), padded with
    NaN where runs differ in length and for runs without a readable store; root variables
    ``status``, ``message`` and ``store`` (arm, seed); root attrs from the manifest (name,
    description, finding, scale, seeds, grid, dims, path). Coordinates on ``arm``: the config
    keys that vary between arms, by dotted name. ``dims="auto"`` replaces ``arm`` by one
    dimension per grid key (named by the manifest's short names, e.g. ``rule``, ``depth``)
    when the arms are the full cross of a grid; ``dims="arm"`` keeps a flat ``arm``.
    """
    if dims not in ("auto", "arm"):
        raise ValueError(f"dims={dims!r} must be 'auto' or 'arm'")
    path = Path(path)
    manifest = read_manifest(path)
    entries = run_entries(manifest)
    arms = [a["name"] for a in manifest["arms"]]
    seeds = [int(s) for s in manifest["seeds"]]
    status, message, stores = [], [], []
    groups: dict[str, dict[int, xr.Dataset]] = {g: {} for g in GROUPS}
    for i, entry in enumerate(entries.values()):
        state, note, tree = open_point(path, entry)
        status.append(state)
        message.append(note)
        stores.append(str(entry["store"]))
        for group in GROUPS:
            if tree is not None and group in tree.children:
                groups[group][i] = _plain_strings(tree[group].to_dataset())
    n = len(entries)
    coords = arm_coordinates(manifest)
    root = xr.Dataset(
        {
            "status": ("_point", np.array(status, dtype=object), {"long_name": "run status"}),
            "message": ("_point", np.array(message, dtype=object), {"long_name": "why"}),
            "store": (
                "_point",
                np.array(stores, dtype=object),
                {"long_name": "run store, relative to the study directory"},
            ),
        },
        coords={"_point": np.arange(n)},
    )
    nodes = {
        "/": _to_arm_seed(root, arms, seeds, coords),
        "/steps": _to_arm_seed(_stack(groups["steps"], n, ("step", "layer")), arms, seeds, coords),
        "/epochs": _to_arm_seed(_stack(groups["epochs"], n, ("epoch",)), arms, seeds, coords),
    }
    unstack = grid_dims(manifest) if dims == "auto" else None
    if unstack:
        nodes = {k: _unstack_grid(v, manifest, unstack) for k, v in nodes.items()}
    nodes["/"].attrs = study_attrs(manifest, path)
    tree = xr.DataTree.from_dict(nodes)
    tree.encoding = {"source": str(path)}
    return tree


def study_attrs(manifest: dict[str, Any], path: str | Path) -> dict[str, Any]:
    """The study's root attributes: what the manifest says about it as a whole."""
    return {
        "kind": KIND,
        "path": str(path),
        "name": str(manifest.get("name") or Path(path).name),
        "description": str(manifest.get("description") or ""),
        "finding": manifest.get("finding"),
        "scale": manifest.get("scale"),
        "seeds": [int(s) for s in manifest["seeds"]],
        "grid": manifest.get("grid"),
        "dims": manifest.get("dims") or {},
        "spec_path": str(manifest.get("spec_path") or ""),
        "dynalign_version": str(manifest.get("dynalign_version") or ""),
    }


def _plain_strings(ds: xr.Dataset) -> xr.Dataset:
    """Text coordinates as Python strings (zarr v3 may hand back numpy StringDType)."""
    for name in list(ds.coords):
        if ds[name].dtype.kind == "T":
            ds = ds.assign_coords({name: ds[name].astype(object)})
    return ds
