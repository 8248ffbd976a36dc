"""`dynalign record` and `dynalign inspect`: flags, overrides, and one-line errors (exit 2)
that leave nothing behind."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from dynalign import open_run
from dynalign.cli.main import cli

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


def test_record_on_a_pipe_names_the_store_first_then_one_line_per_epoch(tmp_path):
    """Without a terminal (a log, CI) progress is one stderr line per epoch, after the line
    that says where the store goes; stdout keeps the summary."""
    out = tmp_path / "p.zarr"
    args = [*SMALL[:-1], "--epochs", "2", "--out", str(out)]
    done = subprocess.run(
        [sys.executable, "-m", "dynalign.cli", "record", *args],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines[0].startswith("recording fa on digits into ") and str(out) in lines[0], lines
    assert "(2 epochs, 2 steps)" in lines[0]
    epochs = [line for line in lines if line.startswith("epoch ")]
    assert [line.split(":")[0] for line in epochs] == ["epoch 1/2", "epoch 2/2"], lines
    assert lines[1:] == epochs
    assert all("train loss" in line and "val loss" in line and " s" in line for line in epochs)
    assert f"store: {out}" in done.stdout and "epochs: 2" in done.stdout


def test_quiet_record_prints_only_the_summary(tmp_path):
    result = invoke("record", *SMALL, "--out", str(tmp_path / "q.zarr"))
    assert result.exit_code == 0 and result.stderr == "", result.stderr
    assert result.stdout.startswith("store: ")


def test_record_help_shows_types_defaults_and_help_for_every_option():
    from dynalign.config import Config

    train = Config().train
    text = " ".join(invoke("record", "--help").output.split())  # undo the wrapping
    for flag, kind, value in (
        ("--epochs", "INTEGER", train.epochs),
        ("--batch-size", "INTEGER", train.batch_size),
        ("--lr", "FLOAT", train.lr),
        ("--seed", "INTEGER", train.seed),
        ("--threads", "INTEGER", train.threads),
    ):
        assert f"{flag} {kind}" in text, flag
        described = text[text.index(f"{flag} {kind}") :]
        assert f"[default: {value};" in described[: described.index("]")], flag
    params = cli.commands["record"].params
    assert [p.name for p in params if not (p.help or "").strip()] == []


def test_threads_default_to_one(tmp_path):
    import torch

    from dynalign.config import from_json

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        out = tmp_path / "d.zarr"
        assert invoke("record", *SMALL, "--out", str(out)).exit_code == 0
        assert torch.get_num_threads() == 1
        assert json.loads(open_run(out).attrs["config"])["train"]["threads"] == 1
    finally:
        torch.set_num_threads(before)
    old = json.loads(open_run(out).attrs["config"])
    old["train"]["threads"] = None  # as stores written before the default changed keep it
    assert from_json(json.dumps(old)).train.threads is None


def test_inspect_shows_the_keys_the_run_reads(tmp_path):
    out = tmp_path / "m.zarr"
    invoke("record", *SMALL, "--out", str(out))
    text = invoke("inspect", str(out)).output
    model = next(line for line in text.splitlines() if line.strip().startswith("[model]"))
    assert "kind=mlp" in model and "depth=1" in model and "width=16" in model
    for key in ("channels", "kernel_size", "code_size", "seq_len", "patch_size", "text_path"):
        assert f"{key}=" not in text, key
    assert "--json" in text
    full = json.loads(invoke("inspect", str(out), "--json").output)["config"]
    assert "channels" in full["model"] and "seq_len" in full["data"]
