"""Stores of earlier schema versions still open and analyse (version 1: tests/synthetic_stores).

A version-3 store is made here from a fresh one by writing its fixed B out again in every
snapshot, as version 3 stored it, and a version-2 store from that by removing what version 3
added, exactly as ``dynalign.schema.ADDED_IN_3`` names it, so the test follows the schema as it
grows.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import zarr
from click.testing import CliRunner

from dynalign.analyses import applicable
from dynalign.cli.main import cli
from dynalign.feedback import feedback_layers
from dynalign.reader import check_store, open_run
from dynalign.record import prepare, record, resume
from dynalign.schema import ADDED_IN_3, FIXED, SCHEMA_VERSION
from dynalign.store import StoreError


def _set_root(path, version: int, arrays=None) -> None:
    meta = path / "zarr.json"
    doc = json.loads(meta.read_text())
    attrs = doc["attributes"]
    attrs["schema_version"] = version
    if arrays is not None:
        attrs["arrays"] = arrays(attrs["arrays"])
    attrs["status"] = "interrupted"  # so that resume has something to refuse
    meta.write_text(json.dumps(doc))


def _as_version_3(path) -> None:
    """Rewrite a finished store as version 3 wrote it: every fixed B once per snapshot."""
    root = zarr.open_group(str(path), mode="r+")
    n = root.attrs["committed"]["snapshots"]
    for name in root.attrs["layers"]:
        group = root[f"snapshots/{name}"]
        fixed = group["feedback"]
        assert fixed.attrs[FIXED] and fixed.shape[0] == 1
        value, dims = fixed[0], fixed.metadata.dimension_names
        attrs = {k: v for k, v in fixed.attrs.items() if k != FIXED}
        array = group.create_array(
            "feedback",
            shape=(n, *value.shape),
            chunks=(1, *value.shape),
            dtype=value.dtype,
            dimension_names=dims,
            attributes=attrs,
            overwrite=True,
        )
        array[...] = np.broadcast_to(value, array.shape)
    _set_root(path, 3)


def _as_version_2(path) -> None:
    """Rewrite a finished store as version 2 wrote it: without the version-3 arrays."""
    _as_version_3(path)
    for name in ADDED_IN_3:
        shutil.rmtree(path / "steps" / name)
    _set_root(path, 2, lambda arrays: [a for a in arrays if a.split("/")[-1] not in ADDED_IN_3])


def test_a_fixed_feedback_is_stored_once_and_read_in_every_snapshot(tmp_path, tiny_config):
    path = tmp_path / "v4.zarr"
    config = tiny_config()
    record(config, path, progress=False)
    _, model, _, _ = prepare(config)  # the same seed: the B the run drew (and never changed)
    root = zarr.open_group(str(path), mode="r")
    assert root.attrs["schema_version"] == SCHEMA_VERSION == 4
    tree = open_run(path)
    for name in root.attrs["layers"]:
        stored = root[f"snapshots/{name}/feedback"]
        assert stored.shape[0] == 1 and stored.attrs[FIXED] is True
        feedback = tree["snapshots"][name].ds.feedback
        n = tree["snapshots"][name].ds.sizes["snapshot"]
        assert n == 4 and feedback.sizes["snapshot"] == n  # steps 0, 5, 10, 12
        np.testing.assert_array_equal(stored[0], feedback_layers(model)[name].feedback.numpy())
        np.testing.assert_array_equal(feedback.values, np.broadcast_to(stored[0], feedback.shape))
        np.testing.assert_array_equal(feedback.isel(snapshot=-1).values, stored[0])
        np.testing.assert_array_equal(feedback[1:4].values, feedback.values[1:4])
        np.testing.assert_array_equal(feedback[n - 1, :2, 1].values, stored[0, :2, 1])
        with pytest.raises(IndexError):
            np.asarray(feedback[n])
    assert check_store(path, decode=True) == []


def test_a_version_3_store_opens_checks_and_analyses(tmp_path, tiny_config):
    path = tmp_path / "v3.zarr"
    record(tiny_config(), path, progress=False)
    fresh = {n: open_run(path)["snapshots"][n].ds.feedback.values for n in ("fc1", "fc2")}
    _as_version_3(path)
    tree = open_run(path)
    for name, value in fresh.items():
        np.testing.assert_array_equal(tree["snapshots"][name].ds.feedback.values, value)
    assert check_store(path, decode=True) == []
    for module in applicable(tree):
        module.analyze(tree)
    with pytest.raises(StoreError, match="schema version 3.*record it again"):
        resume(path, progress=False)


def test_a_version_2_store_opens_checks_and_analyses(tmp_path, tiny_config):
    path = tmp_path / "v2.zarr"
    record(tiny_config(), path, progress=False)
    _as_version_2(path)
    tree = open_run(path)
    steps = tree["steps"].ds
    assert not set(ADDED_IN_3) & set(steps.data_vars)
    assert steps.update_angle.sizes["step"] == 12
    assert check_store(path) == []
    names = [m.NAME for m in applicable(tree)]
    assert "alignment" in names
    for module in applicable(tree):
        module.analyze(tree)  # no variable of version 3 is required
    res = CliRunner().invoke(cli, ["analyze", str(path), "--only", "alignment"])
    assert res.exit_code == 0, res.output
    with pytest.raises(StoreError, match="schema version 2.*record it again"):
        resume(path, progress=False)
