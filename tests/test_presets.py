"""Every shipped preset runs end to end at a tiny size and leaves a store with its model's
variables; the CLI lists presets and records them."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from dynalign import open_run
from dynalign.cli.main import cli
from dynalign.config import build_config, preset_description, preset_names
from dynalign.models import model_class
from dynalign.probes import probe_variables

TINY = [
    "--set",
    "train.epochs=1",
    "--set",
    "data.n_train=64",
    "--set",
    "data.n_val=32",
    "--set",
    "probes.snapshot_every=1",
    "--set",
    "probes.reconstruction_every=1",
    "--set",
    "train.batch_size=32",
    "--quiet",
]


def shrink(kind: str) -> list[str]:
    """A small model of ``kind``: its width, or its channels where it has no width (a kind
    refuses a key it does not read)."""
    small = "model.width=16" if "width" in model_class(kind).reads else "model.channels=4,8"
    return ["--set", small]


EXPECTED_LAYERS = {
    "mlp": None,  # fc1 .. fc{depth+1}
    "convnet": ["conv1", "conv2", "fc"],
    "rnn": ["rnn.W_x", "rnn.H", "rnn.U"],
    "autoencoder": ["fc1", "fc2", "fc3"],
}

FINDING_ARMS = {  # at least one preset per finding and arm (DESIGN.md, findings 1-8)
    "fc3-bp",
    "fc3-fa",
    "fc8-fa",
    "fc8-fa-bn",
    "fc3-fa-bn",
    "bn-affine",
    "bn-noaffine",
    "bn-running-prev",
    "bn-running-incl",
    "conv-bp",
    "conv-fa",
    "rnn-bp",
    "rnn-fa",
    "sae-bp",
    "sae-fa",
    "dale-synapse-fa",
    "dale-neuron-fa",
    "mixed-relu-fa",
}


def test_every_finding_has_its_presets():
    names = set(preset_names())
    assert FINDING_ARMS <= names
    for name in names:
        assert preset_description(name).startswith("Finding"), name
        build_config(preset=name)  # every preset is a valid config


def test_presets_command_lists_each_with_a_line():
    result = CliRunner().invoke(cli, ["presets"])
    assert result.exit_code == 0
    lines = result.output.strip().splitlines()
    assert len(lines) == len(preset_names())
    assert any(line.startswith("rnn-fa ") and "FA" in line for line in lines)


@pytest.mark.parametrize("name", preset_names())
def test_preset_runs_and_records(tmp_path, name):
    out = tmp_path / f"{name}.zarr"
    preset = build_config(preset=name)
    tiny = [*TINY, *shrink(preset.model.kind)]
    result = CliRunner().invoke(cli, ["record", "--preset", name, "--out", str(out), *tiny])
    assert result.exit_code == 0, result.output
    assert f"store: {out}" in result.output
    tree = open_run(out)
    config = json.loads(tree.attrs["config"])
    assert config["rule"]["name"] == preset.rule.name
    assert config["model"]["kind"] == preset.model.kind
    assert config["train"]["epochs"] == 1  # --set wins over the preset
    kind = preset.model.kind
    layers = EXPECTED_LAYERS[kind] or [f"fc{i}" for i in range(1, preset.model.depth + 2)]
    assert tree.attrs["layers"] == layers
    steps = tree["steps"].ds
    for v in probe_variables():
        assert steps[v.name].dims == ("step", "layer")
    live = layers[-1:] if preset.rule.name == "frozen" else layers  # frozen: no hidden update
    assert np.isfinite(steps.update_angle.isel(step=0).sel(layer=live)).all()
    for layer in layers:
        snap = tree[f"snapshots/{layer}"].ds
        # every rule but bp keeps a B per layer; the head-only control only the read-out's (zero)
        rule = preset.rule.name
        has_b = rule != "bp" and (rule != "frozen" or layer == layers[-1])
        assert ("feedback" in snap) == has_b
        if preset.constraint.sign != "none":
            sign = snap["sign"].values
            w = snap.weight.values
            assert np.all(w * sign >= 0)  # every weight on its own side, in every snapshot
    if kind == "autoencoder":
        assert {"recon_loss", "sparsity_loss"} <= set(steps.data_vars)
        rec = tree["reconstructions"].ds
        assert rec.reconstruction.dims == ("snapshot", "probe", "pixel")
        assert rec.input.shape[1] == rec.reconstruction.shape[2]
    if preset.model.activation == "mixed_relu":
        units = tree["units"].ds
        assert len(units.data_vars) == preset.model.depth
        assert set(np.unique(units["act1"].values)) <= {-1, 1}
