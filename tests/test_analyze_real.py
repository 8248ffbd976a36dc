"""`dynalign analyze` and `dynalign report` on real stores recorded at a tiny size: an FA and a
BP MLP, a Dale's-law run and a sparse autoencoder."""

from __future__ import annotations

import base64
import json

import pytest
import xarray as xr
from click.testing import CliRunner
from test_report import _parse

from dynalign.cli.main import cli

TINY = [
    "--set",
    "train.epochs=2",
    "--set",
    "data.n_train=120",
    "--set",
    "data.n_val=40",
    "--set",
    "model.width=16",
    "--set",
    "train.batch_size=20",
    "--set",
    "probes.snapshot_every=3",
    "--set",
    "probes.reconstruction_every=3",
    "--quiet",
]
RUNS = {"fa": "fc3-fa", "bp": "fc3-bp", "dale": "dale-synapse-fa", "sae": "sae-fa"}


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("real")
    paths = {}
    for key, preset in RUNS.items():
        out = root / f"{key}.zarr"
        result = CliRunner().invoke(cli, ["record", "--preset", preset, "--out", str(out), *TINY])
        assert result.exit_code == 0, result.output
        paths[key] = out
    return paths


def test_analyze_runs_what_applies(stores):
    result = CliRunner().invoke(cli, ["analyze", *map(str, stores.values())])
    assert result.exit_code == 0, result.output
    out = result.output
    assert out.count("alignment —") == 4
    assert "autoencoder — sae" in out and "verdict:" in out
    assert "unlearning — dale" in out
    assert "compare — 4 runs" in out


def test_analyze_json_and_netcdf(stores, tmp_path):
    result = CliRunner().invoke(
        cli,
        ["analyze", str(stores["fa"]), str(stores["bp"]), "--json", "--out", str(tmp_path / "res")],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)  # notes about written files go to stderr
    runs = {r["run"]: r for r in data["runs"]}
    assert set(runs) == {"fa", "bp"}
    assert "alignment" in runs["fa"]["analyses"]
    files = sorted(p.name for p in (tmp_path / "res").iterdir())
    assert "compare.nc" in files and any(f.startswith("fa_alignment") for f in files)
    ds = xr.open_dataset(
        tmp_path / "res" / next(f for f in files if f.startswith("fa_alignment")), engine="h5netcdf"
    )
    assert "fc1" in ds["layer"].values
    ds.close()


def test_report_html_and_pdf(stores, tmp_path):
    out = tmp_path / "report.html"
    result = CliRunner().invoke(
        cli, ["report", *map(str, stores.values()), "--out", str(out), "--pdf"]
    )
    assert result.exit_code == 0, result.output
    page = _parse(out)
    assert len(page.images) >= 8  # angles per run, unlearning, autoencoder grids, compare curves
    for src in page.images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    text = out.read_text(encoding="utf-8")
    assert "does not reconstruct" in text or "reconstructs" in text
    assert out.with_suffix(".pdf").read_bytes()[:4] == b"%PDF"


def test_foreign_and_corrupt_store_errors(stores, tmp_path):
    import shutil

    broken = tmp_path / "broken.zarr"
    shutil.copytree(stores["fa"], broken)
    (broken / "zarr.json").write_text("{ not json")
    for command in (["analyze"], ["report", "--out", str(tmp_path / "r.html")]):
        result = CliRunner().invoke(cli, [*command, str(broken)])
        assert result.exit_code == 2
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: ") and "broken.zarr" in lines[0]
