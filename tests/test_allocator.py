"""Large tensors of a probe step reuse the previous step's memory (dynalign.allocator)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from dynalign.allocator import keep_freed_memory

GLIBC = sys.platform == "linux" and os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc")

#: a default-sized ConvNet (16 and 32 channels on 3x32x32 images, batch 100) recording every
#: probe on every step; prints the minor page faults of steps 6-15. No snapshots: this net's
#: log-spaced schedule takes one nearly every early step, and their writing on the store's
#: thread faulted in fresh memory of its own, up to half the default's count, when it fell in
#: the window
PROBE_STEPS = """
import resource, sys, tempfile, pathlib, torch
import dynalign.allocator
if sys.argv[1] == "default":
    dynalign.allocator._DONE.append(False)  # as if already asked: glibc's own thresholds
from dynalign.config import build_config
from dynalign.data import Dataset
from dynalign.feedback import feedback_layers
from dynalign.models import build
from dynalign.probes import probe_variables
from dynalign.rules import attach_rule, make_rule
from dynalign.store import RunWriter
from dynalign.trainer import Trainer

torch.set_num_threads(1)
g = torch.Generator().manual_seed(0)
x, y = torch.randn(200, 3, 32, 32, generator=g), torch.randint(0, 10, (200,), generator=g)
data = Dataset("images", x, y, x[:100], y[:100], 10, (3, 32, 32), "classification", "0" * 64)
config = build_config(overrides={
    "model.kind": "convnet", "model.channels": [16, 32], "data.name": "cifar10",
    "rule.name": "fa", "probes.every": 1, "train.epochs": 100, "probes.snapshot_every": 0,
})
model = build(config, data.input_shape, 10, torch.Generator().manual_seed(1))
rule = attach_rule(model, make_rule(config), torch.Generator().manual_seed(2), data.input_shape)
layers = feedback_layers(model)
writer = RunWriter(
    pathlib.Path(tempfile.mkdtemp()) / "run.zarr", {"config": config.to_json()},
    {n: tuple(m.weight.shape) for n, m in layers.items()},
    {n: tuple(m.feedback.shape) for n, m in layers.items() if m.feedback is not None},
    (), probe_variables(),
)
trainer = Trainer(config, data, model, rule, writer, progress=False)
for i in range(15):
    if i == 5:
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    trainer.train_batch(x[i % 2 * 100:][:100], y[i % 2 * 100:][:100])
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults)
writer.close("completed")
"""


def _faults(mode: str) -> int:
    out = subprocess.run(
        [sys.executable, "-c", PROBE_STEPS, mode],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    return int(out.stdout.split()[-1])


def test_keep_freed_memory_takes_once_per_process():
    assert keep_freed_memory() is GLIBC
    assert keep_freed_memory() is GLIBC  # asked again: the same answer, nothing set twice


@pytest.mark.skipif(not GLIBC, reason="the thresholds are glibc's malloc's")
def test_convnet_probe_steps_reuse_freed_memory():
    """Without the thresholds, glibc hands back the freed feature maps and errors of each step
    and every step faults its memory in anew (tens of thousands of page faults in ten steps);
    with them, ten steps fault a small fraction of that."""
    kept, default = _faults("keep"), _faults("default")
    assert default > 2_000, default  # the workload does allocate and free large blocks
    assert kept * 2 < default, (kept, default)
