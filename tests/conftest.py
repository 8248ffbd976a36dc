"""Shared test set-up: one torch thread (the suite runs on small shared CPUs), tiny configs."""

from __future__ import annotations

import pytest
import torch

from dynalign.config import build_config

torch.set_num_threads(1)


@pytest.fixture
def torch_threads():
    """Set torch's thread count (and so the compiled loops') for one test, restored after."""
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


@pytest.fixture
def tiny_config():
    """A config that records a few dozen steps of a small FA MLP on digits in about a second."""

    def make(**overrides):
        base = {
            "model.depth": 2,
            "model.width": 32,
            "train.epochs": 2,
            "data.n_train": 300,
            "data.n_val": 100,
            "train.batch_size": 50,
            "probes.snapshot_every": 5,
        }
        base.update(overrides)
        return build_config(overrides=base)

    return make
