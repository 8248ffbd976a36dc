"""`dynalign record` and `dynalign inspect`: flags, overrides, and one-line errors (exit 2)
that leave nothing behind."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner
from dynalign.cli.main import cli

from dynalign import open_run

SMALL = [
    "--depth",
    "1",
    "--width",
    "16",
    "--epochs",
    "1",
    "--set",
    "data.n_train=100",
    "--set",
    "data.n_val=50",
    "--quiet",
]


def invoke(*args):
    return CliRunner().invoke(cli, list(args))


def test_record_flags_and_set_reach_the_store(tmp_path):
    out = tmp_path / "r.zarr"
    result = invoke(
        "record",
        *SMALL,
        "--rule",
        "bp",
        "--lr",
        "0.05",
        "--seed",
        "3",
        "--set",
        "train.momentum=0.5",
        "--out",
        str(out),
    )
    assert result.exit_code == 0, result.output
    assert f"store: {out}" in result.output and "status: completed" in result.output
    assert "val_accuracy" in result.output
    config = json.loads(open_run(out).attrs["config"])
    assert config["rule"]["name"] == "bp" and config["train"]["lr"] == 0.05
    assert config["train"]["seed"] == 3 and config["train"]["momentum"] == 0.5
    assert config["model"]["depth"] == 1


def test_short_keys_in_set(tmp_path):
    out = tmp_path / "s.zarr"
    result = invoke(
        "record", *SMALL, "--set", "dataset=synthetic", "--set", "momentum=0.1", "--out", str(out)
    )
    assert result.exit_code == 0, result.output
    config = json.loads(open_run(out).attrs["config"])
    assert config["data"]["name"] == "synthetic" and config["train"]["momentum"] == 0.1


def test_record_config_file(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text("[model]\ndepth = 1\nwidth = 8\n[train]\nepochs = 1\n[data]\nn_train = 100\n")
    out = tmp_path / "c.zarr"
    result = invoke("record", "--config", str(toml), "--width", "12", "--quiet", "--out", str(out))
    assert result.exit_code == 0, result.output
    config = json.loads(open_run(out).attrs["config"])
    assert config["model"]["width"] == 12 and config["model"]["depth"] == 1  # flag beats file


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "train.lrr=0.1"], "unknown config key 'train.lrr'; did you mean 'train.lr'?"),
        (["--set", "train.lr"], "must look like section.key=value"),
        (["--rule", "kpp"], "rule.name='kpp' is not one of: bp, fa, dfa"),
        (["--depth", "two"], "model.depth='two' is not a valid int"),
        (["--lr", "-1"], "train.lr=-1.0 must be greater than 0"),
        (["--epochs", "0"], "train.epochs=0 must be greater than 0"),
        (["--preset", "fc3-fx"], "unknown preset 'fc3-fx'; did you mean 'fc3-fa'?"),
        (["--config", "missing.toml"], "does not exist"),
        (["--set", "data.n_train=99999"], "n_train"),
        (["--dataset", "mnist", "--data-dir", "/nonexistent/dir"], "/nonexistent/dir"),
        (["--device", "cuda:7"], "train.device"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, args, message):
    out = tmp_path / "bad.zarr"
    if args[0] == "--device":
        import torch

        if torch.cuda.is_available():
            pytest.skip("a CUDA device exists here")
    result = invoke("record", *SMALL, *args, "--out", str(out))
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], lines
    assert not out.exists()


def test_bad_toml_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[model\ndepth = ")
    result = invoke("record", "--config", str(bad), "--out", str(tmp_path / "x.zarr"))
    assert result.exit_code == 2 and "is not valid TOML" in result.output


def test_existing_output_needs_overwrite(tmp_path):
    out = tmp_path / "o.zarr"
    assert invoke("record", *SMALL, "--out", str(out)).exit_code == 0
    created = open_run(out).attrs["created"]
    result = invoke("record", *SMALL, "--out", str(out))
    assert result.exit_code == 2 and "--overwrite" in result.output
    assert open_run(out).attrs["created"] == created
    assert invoke("record", *SMALL, "--out", str(out), "--overwrite").exit_code == 0


def test_inspect(tmp_path):
    out = tmp_path / "i.zarr"
    invoke("record", *SMALL, "--out", str(out))
    result = invoke("inspect", str(out))
    assert result.exit_code == 0
    assert "status:   completed" in result.output and "layers:   fc1, fc2" in result.output
    assert "steps:    1" in result.output and "val_accuracy" in result.output
    info = json.loads(invoke("inspect", str(out), "--json").output)
    assert info["status"] == "completed" and info["steps"] == 1 and info["layers"] == ["fc1", "fc2"]
    assert 0 <= info["final"]["val_accuracy"] <= 1


def test_inspect_errors(tmp_path):
    result = invoke("inspect", str(tmp_path / "none.zarr"))
    assert (
        result.exit_code == 2
        and result.output.startswith("Error: ")
        and "does not exist" in result.output
    )
    (tmp_path / "dir").mkdir()
    result = invoke("inspect", str(tmp_path / "dir"))
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1


def test_console_script_entry_point(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "dynalign.cli", "--help"], capture_output=True, text=True
    )
    assert done.returncode == 0 and "record" in done.stdout


def test_threads_flag_sets_torch_threads(tmp_path):
    import torch

    before = torch.get_num_threads()
    try:
        out = tmp_path / "t.zarr"
        result = invoke("record", *SMALL, "--threads", "2", "--out", str(out))
        assert result.exit_code == 0, result.output
        assert torch.get_num_threads() == 2
        assert json.loads(open_run(out).attrs["config"])["train"]["threads"] == 2
    finally:
        torch.set_num_threads(before)
    result = invoke("record", *SMALL, "--threads", "0", "--out", str(tmp_path / "u.zarr"))
    assert result.exit_code == 2 and "train.threads=0 must be greater than 0" in result.output
