"""Golden test of the store layout: the arrays, dimensions, dtypes, units and root attributes
that a finished run's store holds, one tiny run of each model kind.

Readers (xarray, the analyses, other people's notebooks) depend on this layout, so a change to
it must be deliberate: a reshaping of the core that changes the layout by accident fails here.
A deliberate change of a later schema version is named, entry by entry, in ``ADDED`` below.

Regenerating ``tests/golden/store_layout.json`` (only for a deliberate change, and review its
diff): ``DYNALIGN_REGENERATE_GOLDEN=1 pytest tests/test_store_layout.py``; the test then
writes the file and skips. Without the variable it always compares.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import zarr

from dynalign.config import build_config
from dynalign.record import record

GOLDEN = Path(__file__).parent / "golden" / "store_layout.json"
REGENERATE = os.environ.get("DYNALIGN_REGENERATE_GOLDEN") == "1"

#: settings shared by every run: two steps of one epoch, every probe and snapshot recorded
COMMON = {
    "data.n_train": 60,
    "data.n_val": 30,
    "train.epochs": 1,
    "train.batch_size": 30,
    "train.threads": 1,
    "probes.every": 1,
    "probes.snapshot_every": 1,
}
SMALL_MLP = {"model.depth": 2, "model.width": 8}
#: run kind -> (preset, overrides); "text_path" is filled in with a fixed corpus
RUNS: dict[str, tuple[str, dict[str, Any]]] = {
    "mlp_fa": ("fc3-fa", SMALL_MLP),
    "mlp_bp": ("fc3-bp", SMALL_MLP),
    "convnet": ("conv-fa", {"model.channels": [2, 3]}),
    "rnn": ("rnn-fa", {"model.width": 8, "data.seq_len": 8}),
    "autoencoder": (
        "sae-fa",
        {
            "model.width": 8,
            "model.code_size": 4,
            "data.scaling": "unit",
            "probes.reconstruction_every": 1,
        },
    ),
    "dale": ("dale-synapse-fa", SMALL_MLP),
    "mixed_relu": ("mixed-relu-fa", SMALL_MLP),
}
#: a fixed corpus, so the RNN's vocabulary (and its arrays' shapes) does not depend on the
#: Python version's pydoc topics, the default corpus: 28 distinct characters
CORPUS = "the quick brown fox jumps over the lazy dog. " * 40

#: Entries a later schema version adds or changes deliberately, per kind: {entry: value}, with
#: entries and values as in the golden file (an array "array:<path>", a root attribute
#: "attr:<key>", a group's attribute keys "group:<path>"). Each deliberate change must be named
#: here, with a comment saying which schema version made it and why; None marks an entry that
#: was removed deliberately. The golden file itself stays the layout of schema version 2.


def _per_layer(units: str, long_name: str, n_layers: int = 3) -> dict[str, Any]:
    return {
        "dims": ["step", "layer"],
        "dtype": "float32",
        "shape": ["*", n_layers],
        "units": units,
        "long_name": long_name,
    }


#: schema version 3: per layer, the true gradient's norm and whether the angles' reference
#: was above the numerical floor, the RMS of the layer's output, and a sign constraint's zero
#: crossings and pushes against zero (0 without a constraint), in every run
SCHEMA_3 = {
    "attr:schema_version": 3,
    "array:steps/gradient_norm": _per_layer("1", "Frobenius norm of the backprop gradient of W"),
    "array:steps/reference_valid": _per_layer(
        "1",
        "1 where the backprop gradient is above the numerical floor (angles defined), else 0",
    ),
    "array:steps/activation_rms": _per_layer(
        "1", "root mean square of the layer's output over the batch"
    ),
    "array:steps/zero_crossings": _per_layer(
        "count", "non-zero weights the step tried to carry across zero (clipped to 0)"
    ),
    "array:steps/zero_pushes": _per_layer(
        "count", "weights already at zero the step pushed to the wrong side again"
    ),
}

#: schema version 4
SCHEMA_4 = {**SCHEMA_3, "attr:schema_version": 4}

ADDED: dict[str, dict[str, Any]] = {
    "mlp_fa": SCHEMA_4,
    "mlp_bp": SCHEMA_4,
    "convnet": SCHEMA_4,
    "rnn": SCHEMA_4,
    "autoencoder": SCHEMA_4,
    "dale": SCHEMA_4,
    "mixed_relu": SCHEMA_4,
}
#: schema version 4 also stores a B that the rule never changes (FA's, in every kind but BP,
#: which has none) once: each ``snapshots/<layer>/feedback`` holds one row, marked ``fixed``,
#: instead of one per snapshot (half of the snapshot bytes were copies of it)
FIXED_FEEDBACK = ("mlp_fa", "convnet", "rnn", "autoencoder", "dale", "mixed_relu")

#: root attributes whose values are stable; every other root attribute is recorded by key only
STABLE_ATTRS = ("schema_version", "status", "rule", "model_kind", "task", "layers")
#: a root attribute recorded by key only (its value varies between runs)
PRESENT = "<present>"
#: dimensions that grow as a run appends to them; their length is written as "*"
APPENDED_DIMS = ("step", "epoch", "snapshot")
APPENDED_GROUPS = ("steps", "epochs", "snapshots", "reconstructions")


def layout(store: Path) -> dict[str, Any]:
    """The layout of a finished store, read with plain zarr: {entry: value}."""
    root = zarr.open_group(str(store), mode="r")
    entries: dict[str, Any] = {}
    for key, value in root.attrs.items():
        entries[f"attr:{key}"] = value if key in STABLE_ATTRS else PRESENT
    _walk(root, "", entries)
    return dict(sorted(entries.items()))


def _walk(group: zarr.Group, prefix: str, entries: dict[str, Any]) -> None:
    for name, array in group.arrays():
        path = prefix + name
        dims = list(array.metadata.dimension_names or [])
        shape: list[int | str] = list(array.shape)
        top = path.split("/", 1)[0]
        fixed = bool(array.attrs.get("fixed"))  # one row for every snapshot (schema 4)
        # the appended (first) dimension's length depends on how long the run was
        if top in APPENDED_GROUPS and dims and dims[0] in APPENDED_DIMS and not fixed:
            shape[0] = "*"
        entries[f"array:{path}"] = {
            "dims": dims,
            "dtype": str(array.dtype),
            "shape": shape,
            "units": array.attrs.get("units"),
            "long_name": array.attrs.get("long_name"),
            **({"fixed": True} if fixed else {}),
        }
    for name, sub in group.groups():
        if not prefix and name == "checkpoint":  # a resumable run's state, not its record
            continue
        path = prefix + name
        entries[f"group:{path}"] = sorted(sub.attrs.keys())
        _walk(sub, path + "/", entries)


def expected(golden: dict[str, Any], kind: str) -> dict[str, Any]:
    """The golden layout of ``kind`` with its deliberate changes (``ADDED``) applied."""
    merged = dict(golden[kind])
    if kind in FIXED_FEEDBACK:
        for entry, value in golden[kind].items():
            if entry.startswith("array:snapshots/") and entry.endswith("/feedback"):
                merged[entry] = {**value, "shape": [1, *value["shape"][1:]], "fixed": True}
    for entry, value in ADDED.get(kind, {}).items():
        if value is None:
            merged.pop(entry, None)
        else:
            merged[entry] = value
    return merged


def describe_mismatch(want: dict[str, Any], got: dict[str, Any]) -> str:
    """Missing, unexpected and changed entries, one a line ("" when none)."""
    lines = []
    missing = sorted(set(want) - set(got))
    unexpected = sorted(set(got) - set(want))
    changed = sorted(k for k in set(want) & set(got) if want[k] != got[k])
    if missing:
        lines.append(f"missing, expected but not in the store ({len(missing)}):")
        lines += [f"  - {entry}" for entry in missing]
    if unexpected:
        lines.append(f"unexpected, in the store but not expected ({len(unexpected)}):")
        lines += [f"  + {entry}: {json.dumps(got[entry])}" for entry in unexpected]
    if changed:
        lines.append(f"changed, expected -> in the store ({len(changed)}):")
        for entry in changed:
            old, new = want[entry], got[entry]
            if isinstance(old, dict) and isinstance(new, dict):
                for field in sorted(set(old) | set(new)):
                    if old.get(field) != new.get(field):
                        before, after = json.dumps(old.get(field)), json.dumps(new.get(field))
                        lines.append(f"  ~ {entry} {field}: {before} -> {after}")
            else:
                lines.append(f"  ~ {entry}: {json.dumps(old)} -> {json.dumps(new)}")
    return "\n".join(lines)


@pytest.fixture(scope="module")
def layouts(tmp_path_factory) -> dict[str, dict[str, Any]]:
    """Record one tiny run of each kind (a few seconds in all) and read their layouts."""
    folder = tmp_path_factory.mktemp("layout")
    corpus = folder / "corpus.txt"
    corpus.write_text(CORPUS, encoding="utf-8")
    found = {}
    for kind, (preset, overrides) in RUNS.items():
        settings = {**COMMON, **overrides}
        if kind == "rnn":
            settings["data.text_path"] = str(corpus)
        config = build_config(preset=preset, overrides=settings)
        result = record(config, folder / f"{kind}.zarr", progress=False)
        assert result.status == "completed", f"{kind}: {result.status}"
        found[kind] = layout(folder / f"{kind}.zarr")
    if REGENERATE:
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(found, indent=1, sort_keys=True, ensure_ascii=False)
        GOLDEN.write_text(text + "\n", encoding="utf-8")
    return found


@pytest.fixture(scope="module")
def golden(layouts) -> dict[str, dict[str, Any]]:
    if REGENERATE:
        pytest.skip(f"DYNALIGN_REGENERATE_GOLDEN=1: wrote {GOLDEN}; review its diff")
    return json.loads(GOLDEN.read_text(encoding="utf-8"))


def test_golden_covers_every_kind(golden):
    assert sorted(golden) == sorted(RUNS), "regenerate the golden file (see the docstring)"
    assert sorted(ADDED) == sorted(RUNS)


@pytest.mark.parametrize("kind", list(RUNS))
def test_store_layout(kind, layouts, golden):
    assert kind in golden, f"no golden layout for {kind}; regenerate it (see the docstring)"
    want, got = expected(golden, kind), layouts[kind]
    if got != want:  # the entries that differ, not pytest's dump of two large dicts
        pytest.fail(
            f"the {kind} store's layout differs from tests/golden/store_layout.json + ADDED:\n"
            + describe_mismatch(want, got),
            pytrace=False,
        )
