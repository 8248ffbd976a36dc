"""The same run on a CUDA device gives the same trajectory as on the CPU (skipped without one)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dynalign import open_run
from dynalign.record import record

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")


@pytest.mark.parametrize("rule", ["bp", "fa"])
def test_cuda_run_matches_cpu(tmp_path, tiny_config, rule):
    torch.backends.cuda.matmul.allow_tf32 = False
    cpu = tiny_config(**{"rule.name": rule})
    gpu = tiny_config(**{"rule.name": rule, "train.device": "cuda"})
    assert record(cpu, tmp_path / "cpu.zarr", progress=False).status == "completed"
    assert record(gpu, tmp_path / "gpu.zarr", progress=False).status == "completed"
    a, b = open_run(tmp_path / "cpu.zarr"), open_run(tmp_path / "gpu.zarr")
    np.testing.assert_allclose(a["steps"].ds.loss, b["steps"].ds.loss, rtol=1e-4, atol=1e-5)
    for name in ("update_angle", "delta_angle", "feedback_angle", "weight_norm"):
        np.testing.assert_allclose(a["steps"].ds[name], b["steps"].ds[name], rtol=1e-3, atol=0.05)
    np.testing.assert_allclose(a["epochs"].ds.val_accuracy, b["epochs"].ds.val_accuracy, atol=0.02)
    fb_a, fb_b = a["snapshots/fc1"].ds, b["snapshots/fc1"].ds
    if rule == "fa":
        np.testing.assert_array_equal(fb_a.feedback.values, fb_b.feedback.values)
    assert b.attrs["status"] == "completed"


def test_cuda_constrained_run(tmp_path, tiny_config):
    cfg = tiny_config(**{"train.device": "cuda", "constraint.sign": "neuron"})
    record(cfg, tmp_path / "dale.zarr", progress=False)
    tree = open_run(tmp_path / "dale.zarr")
    snap = tree["snapshots/fc2"].ds
    assert np.all(snap.weight.values * snap.sign.values >= 0)
