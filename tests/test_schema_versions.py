"""Stores of earlier schema versions still open and analyse (version 1: tests/synthetic_stores).

A version-2 store is made here from a fresh one by removing what version 3 added, exactly as
``dynalign.schema.ADDED_IN_3`` names it, so the test follows the schema as it grows.
"""

from __future__ import annotations

import json
import shutil

import pytest
import zarr
from click.testing import CliRunner

from dynalign.analyses import applicable
from dynalign.cli.main import cli
from dynalign.reader import check_store, open_run
from dynalign.record import record, resume
from dynalign.schema import ADDED_IN_3, SCHEMA_VERSION
from dynalign.store import StoreError


def _as_version_2(path) -> None:
    """Rewrite a finished store as version 2 wrote it: without the version-3 arrays."""
    for name in ADDED_IN_3:
        shutil.rmtree(path / "steps" / name)
    meta = path / "zarr.json"
    doc = json.loads(meta.read_text())
    attrs = doc["attributes"]
    attrs["schema_version"] = 2
    attrs["arrays"] = [a for a in attrs["arrays"] if a.split("/")[-1] not in ADDED_IN_3]
    attrs["status"] = "interrupted"  # so that resume has something to refuse
    meta.write_text(json.dumps(doc))


def test_a_version_2_store_opens_checks_and_analyses(tmp_path, tiny_config):
    path = tmp_path / "v2.zarr"
    record(tiny_config(), path, progress=False)
    assert zarr.open_group(str(path), mode="r").attrs["schema_version"] == SCHEMA_VERSION == 3
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
