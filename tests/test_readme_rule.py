"""The README's worked example of a new rule runs as written: one file plus a registry line."""

from __future__ import annotations

import math
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from dynalign.reader import open_run
from dynalign.record import record
from dynalign.registry import RULES

README = Path(__file__).resolve().parents[1] / "README.md"
MARKER = "<!-- README example: a rule -->"


def _example_source() -> str:
    text = README.read_text()
    assert MARKER in text, "the README lost its rule example"
    block = re.search(r"```python\n(.*?)```", text[text.index(MARKER) :], re.S)
    return block.group(1)


@pytest.fixture
def noisy_rule(tmp_path):
    (tmp_path / "readme_noisy.py").write_text(_example_source())
    sys.path.insert(0, str(tmp_path))
    RULES.add("noisy", "readme_noisy:NoisyFeedback", "B = W + noise, redrawn every step")
    try:
        yield
    finally:
        RULES.remove("noisy")
        sys.path.remove(str(tmp_path))
        sys.modules.pop("readme_noisy", None)


def test_the_readme_rule_records_and_behaves_as_it_says(noisy_rule, tmp_path, tiny_config):
    config = tiny_config(**{"rule.name": "noisy", "rule.scale": 0.1})
    result = record(config, tmp_path / "noisy.zarr", progress=False)
    assert result.status == "completed"
    tree = open_run(tmp_path / "noisy.zarr")
    steps = tree["steps"].ds
    # B = W + 0.1·bound·ξ: close to W (a few degrees), never equal, redrawn every step
    fb = steps.feedback_angle.sel(layer="fc1").values
    assert np.all((fb > 0.5) & (fb < 15)), fb
    assert len(np.unique(np.round(fb, 6))) > 1
    snaps = tree["snapshots/fc2"].ds
    b, w = snaps.feedback.values, snaps.weight.values
    assert not np.array_equal(b[0], b[-1]) and not np.array_equal(b[-1], w[-1])
    # a small noise barely moves the update from the true gradient
    assert float(steps.update_angle.sel(layer="fc1").max()) < 20
    assert not math.isnan(float(steps.update_angle.sel(layer="fc1")[0]))
