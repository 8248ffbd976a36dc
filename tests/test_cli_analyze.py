"""`dynalign analyze` and `dynalign report` on synthetic stores, through click's CliRunner."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest
import xarray as xr
import zarr
from click.testing import CliRunner
from synthetic_stores import exp_decay, make_run, write_run
from test_autoencoder_analysis import autoencoder_run, probe_inputs
from test_report import _parse

from dynalign.analyses import COMPARE, applicable, figures
from dynalign.analyses.curves import plot_run_curves
from dynalign.cli.analyze import analyze, report
from dynalign.reader import open_run


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """An autoencoder run that reconstructs perfectly, and an FA MLP whose angle decays."""
    folder = tmp_path_factory.mktemp("stores")
    x = probe_inputs()
    ae = write_run(autoencoder_run(x, x), folder / "ae.zarr")
    fa = write_run(
        make_run(steps=60, update_angle=exp_decay(60, 90, 30, 10), config={"rule.name": "fa"}),
        folder / "fa.zarr",
    )
    return str(ae), str(fa)


def _invoke(command, args):
    return CliRunner().invoke(command, [str(a) for a in args], catch_exceptions=False)


# ---------------------------------------------------------------------------------- analyze


def test_analyze_prints_the_tables_of_every_analysis_that_applies(stores):
    res = _invoke(analyze, [stores[0]])
    assert res.exit_code == 0, res.output
    assert "autoencoder — ae (completed)" in res.stdout
    assert "verdict: reconstructs" in res.stdout
    assert "alignment — ae" in res.stdout
    assert "compare —" not in res.stdout  # one run: nothing to compare


def test_analyze_several_stores_adds_compare_and_only_selects(stores):
    res = _invoke(analyze, [*stores])
    assert res.exit_code == 0, res.output
    assert "compare — 2 runs" in res.stdout and "alignment — fa" in res.stdout
    only = _invoke(analyze, [*stores, "--only", "autoencoder"])
    assert only.exit_code == 0, only.output
    assert "autoencoder — ae" in only.stdout
    assert "alignment —" not in only.stdout and "compare —" not in only.stdout
    assert "autoencoder does not apply to" in only.stderr and "fa.zarr" in only.stderr


def test_analyze_json_holds_the_summary_values(stores):
    res = _invoke(analyze, [*stores, "--json"])
    assert res.exit_code == 0, res.output

    def no_nan(token):
        raise AssertionError(f"non-standard JSON constant {token}")

    doc = json.loads(res.stdout, parse_constant=no_nan)
    runs = {r["run"]: r for r in doc["runs"]}
    assert set(runs) == {"ae", "fa"}
    summary = runs["ae"]["analyses"]["autoencoder"]
    assert summary["values"]["final_fvu"] == pytest.approx(0.0, abs=1e-6)
    assert summary["values"]["reconstructs"] is True
    assert summary["attrs"]["verdict"] == "reconstructs"
    plateau = runs["fa"]["analyses"]["alignment"]["values"]["plateau_angle"]["update"]["fc1"]
    assert 29 < plateau < 33  # exp decay from 90 to 30 degrees
    assert "compare" in doc and runs["fa"]["status"] == "completed"


def test_set_param_reaches_the_analysis_and_is_checked(stores):
    res = _invoke(
        analyze,
        [
            stores[0],
            "--only",
            "autoencoder",
            "--json",
            "--set-param",
            "autoencoder.min_specificity=2",
        ],
    )
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)["runs"][0]["analyses"]["autoencoder"]
    assert summary["attrs"]["verdict"] == "does not reconstruct"
    assert json.loads(summary["attrs"]["parameters"])["min_specificity"] == 2
    for bad, words in (
        ("autoencoder.nope=1", "has no parameter 'nope'"),
        ("nothing.x=1", "unknown analysis 'nothing'"),
        ("autoencoder", "NAME.KEY=VALUE"),
    ):
        res = _invoke(analyze, [stores[0], "--set-param", bad])
        assert res.exit_code == 2 and words in res.output, res.output


def test_unknown_only_name_is_an_error(stores):
    res = _invoke(analyze, [stores[0], "--only", "nonsense"])
    assert res.exit_code == 2
    assert res.output.strip().startswith("Error:") and "nonsense" in res.output


def test_out_nc_writes_one_netcdf_per_analysis(stores, tmp_path):
    res = _invoke(analyze, [stores[0], "--only", "autoencoder", "--out", tmp_path / "res.nc"])
    assert res.exit_code == 0, res.output
    saved = xr.open_dataset(tmp_path / "res_autoencoder.nc", engine="h5netcdf")
    assert saved.attrs["verdict"] == "reconstructs"
    np.testing.assert_allclose(saved["fvu"].values, 0.0, atol=1e-6)
    assert saved["fvu"].attrs["units"] == "1"
    assert saved.attrs["source"].endswith("ae.zarr")
    saved.close()


def test_out_directory_holds_every_result_and_compare(stores, tmp_path):
    res = _invoke(analyze, [*stores, "--out", tmp_path / "results"])
    assert res.exit_code == 0, res.output
    names = sorted(p.name for p in (tmp_path / "results").iterdir())
    assert names == [
        "ae_alignment.nc",
        "ae_autoencoder.nc",
        "ae_spectra.nc",
        "compare.nc",
        "fa_alignment.nc",
        "fa_unlearning.nc",
    ]
    for name in names:
        with xr.open_dataset(tmp_path / "results" / name, engine="h5netcdf") as ds:
            assert ds.data_vars
    with xr.open_dataset(tmp_path / "results" / "fa_alignment.nc", engine="h5netcdf") as ds:
        assert [str(v) for v in ds["layer"].values] == ["fc1", "fc2", "fc3"]


# ---------------------------------------------------------------------------------- report


def test_report_writes_html_with_every_figure(stores, tmp_path):
    out = tmp_path / "report.html"
    res = _invoke(report, [*stores, "--out", out])
    assert res.exit_code == 0, res.output
    parser = _parse(out)
    assert parser.images
    for src in parser.images:
        head, data = src.split(",", 1)
        assert head == "data:image/png;base64"
        assert base64.b64decode(data, validate=True)[:8] == b"\x89PNG\r\n\x1a\n"
    trees = [open_run(s) for s in stores]
    made = sum(len(figures(m, m.analyze(t))) for t in trees for m in applicable(t))
    made += len(figures(COMPARE, COMPARE.analyze(trees)))
    made += sum(plot_run_curves(t) is not None for t in trees)  # each run's learning curves
    assert len(parser.images) == made
    assert not out.with_suffix(".pdf").exists()


def test_report_pdf(stores, tmp_path):
    out = tmp_path / "r.html"
    res = _invoke(report, [stores[0], "--out", out, "--pdf"])
    assert res.exit_code == 0, res.output
    assert out.with_suffix(".pdf").read_bytes().startswith(b"%PDF")
    assert "r.pdf" in res.stdout


# ---------------------------------------------------------------------------------- errors


def _not_a_run(tmp_path):
    group = zarr.open_group(str(tmp_path / "other.zarr"), mode="w", zarr_format=3)
    group.attrs["purpose"] = "something else"
    return tmp_path / "other.zarr", "not a dynalign run"


def _plain_directory(tmp_path):
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "notes.txt").write_text("hello")
    return tmp_path / "plain", "not a readable zarr store"


def _truncated_root(tmp_path, stores):
    path = write_run(make_run(steps=5), tmp_path / "cut.zarr")
    meta = (path / "zarr.json").read_bytes()
    (path / "zarr.json").write_bytes(meta[: len(meta) // 2])
    return path, "not a readable zarr store"


def _truncated_group(tmp_path, stores):
    path = write_run(make_run(steps=5), tmp_path / "cutgroup.zarr")
    meta = (path / "steps" / "zarr.json").read_bytes()
    (path / "steps" / "zarr.json").write_bytes(meta[: len(meta) // 3])
    return path, "damaged"


CASES = {
    "missing": lambda tmp, stores: (tmp / "nowhere.zarr", "does not exist"),
    "plain directory": lambda tmp, stores: _plain_directory(tmp),
    "not a dynalign run": lambda tmp, stores: _not_a_run(tmp),
    "truncated zarr.json": _truncated_root,
    "truncated group metadata": _truncated_group,
}


@pytest.mark.parametrize("command", [analyze, report], ids=["analyze", "report"])
@pytest.mark.parametrize("case", list(CASES))
def test_bad_store_is_a_one_line_error(case, command, stores, tmp_path):
    path, words = CASES[case](tmp_path, stores)
    args = [stores[1], path] + (["--out", tmp_path / "r.html"] if command is report else [])
    res = _invoke(command, args)
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), res.output
    assert str(path) in lines[0] and words in lines[0]
    assert "Traceback" not in res.output
    assert not (tmp_path / "r.html").exists()


def test_report_wrong_suffix_is_an_error(stores, tmp_path):
    res = _invoke(report, [stores[1], "--out", tmp_path / "r.txt"])
    assert res.exit_code == 2 and res.output.startswith("Error:") and ".html" in res.output


def _damaged_chunk(tmp_path):
    """A store whose metadata is fine but one data chunk is cut short: found only on reading."""
    path = write_run(
        make_run(steps=20, update_angle=exp_decay(20, 90, 30, 5)), tmp_path / "chunk.zarr"
    )
    chunk = next(
        p
        for p in (path / "steps" / "update_angle").rglob("*")
        if p.parent.name != "update_angle" and p.is_file()
    )
    chunk.write_bytes(chunk.read_bytes()[:5])
    return path


def test_damaged_chunk_is_a_one_line_error_for_analyze(tmp_path):
    path = _damaged_chunk(tmp_path)
    res = _invoke(analyze, [path, "--only", "alignment"])
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Error: {path}: alignment: "), res.output
    assert "damaged" in lines[0]


def test_damaged_chunk_is_reported_in_place_by_report(tmp_path):
    path = _damaged_chunk(tmp_path)
    out = tmp_path / "r.html"
    res = _invoke(report, [path, "--out", out])
    assert res.exit_code == 0, res.output
    assert "alignment could not analyse this" in out.read_text(encoding="utf-8")


def test_unwritable_out_is_a_one_line_error(stores, tmp_path):
    blocker = tmp_path / "afile"
    blocker.write_text("not a folder")
    for command, target in (
        (analyze, blocker / "x.nc"),
        (analyze, blocker),
        (report, blocker / "r.html"),
    ):
        res = _invoke(command, [stores[1], "--out", target])
        assert res.exit_code == 2, res.output
        assert res.output.strip().splitlines()[-1].startswith("Error: "), res.output
        assert "Traceback" not in res.output
