"""The core claims on the embedded digits data (1,297 train / 500 val, 30 epochs, lr 0.01,
momentum 0.9, batch 100): BP and FA both learn a 3x512 MLP, FA's hidden update aligns with the
gradient, and an 8x512 FA MLP needs batch norm. About a minute on one CPU thread."""

from __future__ import annotations

import numpy as np

from dynalign import open_run
from dynalign.config import build_config
from dynalign.record import record


def _run(tmp_path, name, **overrides):
    cfg = build_config(overrides={"probes.every": 10, "probes.snapshot_every": 0, **overrides})
    assert (cfg.data.name, cfg.data.n_val, cfg.train.epochs, cfg.train.lr) == (
        "digits",
        500,
        30,
        0.01,
    )
    result = record(cfg, tmp_path / f"{name}.zarr", progress=False)
    assert result.status == "completed"
    tree = open_run(tmp_path / f"{name}.zarr")
    assert tree.attrs["dataset"]["n_train"] == 1297
    return result, tree


def test_bp_3x512_learns_digits(tmp_path):
    result, _ = _run(tmp_path, "bp", **{"rule.name": "bp"})
    assert result.final["val_accuracy"] >= 0.95


def test_fa_3x512_learns_digits_and_aligns(tmp_path):
    result, tree = _run(tmp_path, "fa", **{"rule.name": "fa"})
    assert result.final["val_accuracy"] >= 0.90
    angle = tree["steps"].ds.update_angle.sel(layer="fc3").dropna("step").values
    assert 80 <= angle[0] <= 100  # starts near orthogonal
    assert np.mean(angle[-5:]) < 70  # and aligns with the true gradient


def test_fa_8x512_needs_batch_norm(tmp_path):
    plain, _ = _run(tmp_path, "fa8", **{"model.depth": 8})
    assert plain.final["val_accuracy"] < 0.2  # near chance (0.1)
    with_bn, _ = _run(tmp_path, "fa8bn", **{"model.depth": 8, "model.batch_norm": "standard"})
    assert with_bn.final["val_accuracy"] >= 0.90
