"""Studies: open_study over real recorded runs, per-run metrics on planted runs, per-arm means
and CIs against direct computation, and inspect/analyze/report on a study directory."""

from __future__ import annotations

import itertools
import json
import shutil

import numpy as np
import pytest
import xarray as xr
from click.testing import CliRunner
from matplotlib.collections import PolyCollection
from synthetic_stores import exp_decay, make_run, rise_then_fall
from test_alignment import check_captions, check_figure
from test_autoencoder_analysis import autoencoder_run, probe_inputs
from test_report import _parse

from dynalign.analyses import study
from dynalign.analyses.smoothing import AnalysisError, bootstrap_ci
from dynalign.cli.main import cli
from dynalign.config import build_config
from dynalign.reader import open_run
from dynalign.record import record
from dynalign.store import StoreError
from dynalign.study_reader import is_reproduction, is_study, open_study, study_runs

TINY = {
    "model.width": 32,
    "train.epochs": 2,
    "data.n_train": 300,
    "data.n_val": 100,
    "train.batch_size": 50,
    "train.lr": 0.2,
    "probes.snapshot_every": 5,
}
SHORT = {"rule.name": "rule", "model.depth": "depth", "train.epochs": "epochs"}


def write_study(folder, arms, seeds, base, skip=(), grid=None, name="demo", extra=None):
    """Record every (arm, seed) but those in ``skip`` (listed as pending) into ``folder`` and
    write its study.json as the sweep driver does. ``arms``: {name: dotted overrides}."""
    arm_entries, runs = [], []
    for arm, overrides in arms.items():
        labels = {k: overrides[k] for k in grid} if grid else {}
        arm_entries.append({"name": arm, "overrides": overrides, "labels": labels})
        for seed in seeds:
            config = build_config(overrides={**base, **overrides, "train.seed": seed})
            store = f"runs/{arm}/seed-{seed}.zarr"
            entry = {"arm": arm, "seed": seed, "store": store, "config": config.to_json()}
            entry["status"] = "pending"
            if (arm, seed) not in skip:
                entry["status"] = record(config, folder / store, progress=False).status
            runs.append(entry)
    manifest = {
        "format": 1,
        "kind": "dynalign-study",
        "spec_text": "",
        "spec_path": f"{name}.toml",
        "name": name,
        "description": f"the {name} study",
        "finding": None,
        "scale": None,
        "grid": grid,
        "dims": {k: SHORT[k] for k in grid} if grid else {},
        "seeds": list(seeds),
        "arms": arm_entries,
        "runs": runs,
        **(extra or {}),
    }
    (folder / "study.json").write_text(json.dumps(manifest))
    return manifest


def grid_arms(grid):
    keys = list(grid)
    return {
        ",".join(f"{SHORT[k]}={v}" for k, v in zip(keys, combo, strict=True)): dict(
            zip(keys, combo, strict=True)
        )
        for combo in itertools.product(*grid.values())
    }


@pytest.fixture(scope="module")
def grid_study(tmp_path_factory):
    """rule (bp, fa) x depth (2, 3) x seeds (0, 1); seed 1 of fa/depth 3 never ran."""
    folder = tmp_path_factory.mktemp("grid")
    grid = {"rule.name": ["bp", "fa"], "model.depth": [2, 3]}
    write_study(folder, grid_arms(grid), [0, 1], TINY, skip={("rule=fa,depth=3", 1)}, grid=grid)
    return folder


@pytest.fixture(scope="module")
def named_study(tmp_path_factory):
    """Named arms of different lengths (1 and 2 epochs); seed 1 failed before writing (short)
    or left a store that is not one (long)."""
    folder = tmp_path_factory.mktemp("named")
    arms = {"short": {"train.epochs": 1}, "long": {"train.epochs": 2}}
    manifest = write_study(
        folder, arms, [0, 1], TINY, skip={("short", 1), ("long", 1)}, name="lengths"
    )
    manifest["runs"][1].update(status="failed", message="ValueError: boom")
    (folder / "study.json").write_text(json.dumps(manifest))
    junk = folder / manifest["runs"][3]["store"]
    junk.mkdir(parents=True)
    (junk / "notes.txt").write_text("not a store")
    return folder


@pytest.fixture(scope="module")
def grid_summary(grid_study):
    return study.summarise(grid_study)


# ------------------------------------------------------------------------------ open_study


def test_open_study_unstacks_a_full_grid(grid_study):
    tree = open_study(grid_study)
    steps, epochs = tree["steps"].to_dataset(), tree["epochs"].to_dataset()
    assert steps["loss"].dims == ("rule", "depth", "seed", "step")
    assert steps["update_angle"].dims == ("rule", "depth", "seed", "step", "layer")
    assert epochs["val_accuracy"].dims == ("rule", "depth", "seed", "epoch")
    assert list(tree["rule"].values) == ["bp", "fa"]
    assert list(tree["depth"].values) == [2, 3]
    assert list(tree["seed"].values) == [0, 1]
    assert tree["arm"].sel(rule="fa", depth=3).item() == "rule=fa,depth=3"
    assert type(steps["loss"].data).__module__.startswith("dask")  # lazy until asked
    # values are the run's own, read from its store
    run = open_run(grid_study / "runs/rule=fa,depth=2/seed-1.zarr")
    np.testing.assert_array_equal(
        steps["loss"].sel(rule="fa", depth=2, seed=1).values, run["steps"]["loss"].values
    )
    np.testing.assert_array_equal(
        epochs["val_accuracy"].sel(rule="fa", depth=2, seed=1).values,
        run["epochs"]["val_accuracy"].values,
    )
    # depth 2 has 3 layers, depth 3 has 4: the union, NaN where a run has no such layer
    assert list(steps["layer"].values) == ["fc1", "fc2", "fc3", "fc4"]
    assert steps["update_angle"].sel(depth=2, layer="fc4").isnull().all()
    assert steps["update_angle"].sel(depth=3, layer="fc4").notnull().any()
    # the run that never ran: NaN rows and its status
    assert tree["status"].sel(rule="fa", depth=3, seed=1).item() == "pending"
    assert tree["status"].sel(rule="bp", depth=2, seed=0).item() == "completed"
    assert steps["loss"].sel(rule="fa", depth=3, seed=1).isnull().all()
    assert tree.attrs["name"] == "demo" and tree.attrs["seeds"] == [0, 1]


def test_open_study_flat_arm(grid_study):
    tree = open_study(grid_study, dims="arm")
    assert tree["epochs"]["val_accuracy"].dims == ("arm", "seed", "epoch")
    assert list(tree["arm"].values) == [
        "rule=bp,depth=2",
        "rule=bp,depth=3",
        "rule=fa,depth=2",
        "rule=fa,depth=3",
    ]
    assert list(tree["rule.name"].values) == ["bp", "bp", "fa", "fa"]
    assert list(tree["model.depth"].values) == [2, 3, 2, 3]
    grid = open_study(grid_study)
    np.testing.assert_array_equal(
        tree["epochs"]["val_accuracy"].sel(arm="rule=bp,depth=3").values,
        grid["epochs"]["val_accuracy"].sel(rule="bp", depth=3).values,
    )
    with pytest.raises(ValueError, match="dims="):
        open_study(grid_study, dims="grid")


def test_named_arms_pad_shorter_runs_and_report_bad_stores(named_study):
    tree = open_study(named_study)  # no grid: arm stays one dimension
    epochs = tree["epochs"].to_dataset()
    assert epochs["val_accuracy"].dims == ("arm", "seed", "epoch")
    assert list(tree["arm"].values) == ["short", "long"]
    assert list(tree["train.epochs"].values) == [1, 2]
    assert list(epochs["epoch"].values) == [1, 2]
    assert np.isfinite(epochs["val_accuracy"].sel(arm="short", seed=0, epoch=1))
    assert np.isnan(epochs["val_accuracy"].sel(arm="short", seed=0, epoch=2))
    assert np.isfinite(epochs["val_accuracy"].sel(arm="long", seed=0)).all()
    status = tree["status"]
    assert status.sel(arm="short", seed=1).item() == "failed"
    assert tree["message"].sel(arm="short", seed=1).item() == "ValueError: boom"
    assert status.sel(arm="long", seed=1).item() == "unreadable"
    assert "not a readable zarr store" in tree["message"].sel(arm="long", seed=1).item()
    assert epochs["val_accuracy"].sel(seed=1).isnull().all()


def test_study_paths_and_errors(grid_study, tmp_path):
    assert is_study(grid_study) and not is_reproduction(grid_study)
    runs = study_runs(grid_study)
    assert len(runs) == 8 and runs[0][:2] == ("rule=bp,depth=2", 0)
    assert runs[-1][2] == grid_study / "runs/rule=fa,depth=3/seed-1.zarr"
    with pytest.raises(StoreError, match="does not exist"):
        open_study(tmp_path / "nowhere")
    with pytest.raises(StoreError, match="no study.json"):
        open_study(tmp_path)
    (tmp_path / "study.json").write_text("{not json")
    with pytest.raises(StoreError, match="damaged .*not valid JSON"):
        open_study(tmp_path)
    assert not is_study(tmp_path)
    (tmp_path / "study.json").write_text(json.dumps({"kind": "something-else"}))
    with pytest.raises(StoreError, match="not a dynalign study manifest"):
        open_study(tmp_path)
    repro = tmp_path / "repro"
    (repro / "finding-2").mkdir(parents=True)
    shutil.copy(grid_study / "study.json", repro / "finding-2" / "study.json")
    assert is_reproduction(repro) and not is_study(repro)


# ------------------------------------------------------------------------------ metrics


def test_is_metric():
    for name in ("best_val_accuracy", "unlearning_drop", "train_accuracy_epoch_7"):
        assert study.is_metric(name)
    for name in ("val_accuracy_epoch_0", "train_accuracy_epoch_x", "accuracy", "epoch_3"):
        assert not study.is_metric(name)


def test_run_metrics_epoch_and_loss_values():
    tree = make_run(
        steps=30,
        steps_per_epoch=10,
        loss=np.r_[3.0, 5.0, np.full(28, 1.0)],
        val_accuracy=[0.2, 0.5, 0.4],
        train_accuracy=[0.3, 0.6, 0.7],
        val_loss=[2.0, 1.5, 1.2],
        update_angle=exp_decay(30, 90, 30, 3),
    )
    m = study.run_metrics(tree, epochs=(2, 5))
    assert m["best_val_accuracy"] == pytest.approx(0.5)
    assert m["final_val_accuracy"] == pytest.approx(0.4)
    assert m["best_train_accuracy"] == pytest.approx(0.7)
    assert m["val_accuracy_epoch_2"] == pytest.approx(0.5)
    assert m["train_accuracy_epoch_2"] == pytest.approx(0.6)
    assert np.isnan(m["val_accuracy_epoch_5"])  # the run has 3 epochs
    assert m["initial_loss"] == 3.0 and m["max_train_loss"] == 5.0
    assert m["final_val_loss"] == pytest.approx(1.2)
    assert m["diverged"] == 0.0 and m["stable"] == 1.0 and m["epochs_recorded"] == 3.0
    assert m["update_angle_plateau"] == pytest.approx(30.0, abs=0.5)
    assert np.isnan(m["final_fvu"])  # not an autoencoder

    diverged = make_run(steps=30, val_loss=[2.0, np.nan, np.nan], status="diverged")
    m = study.run_metrics(diverged)
    assert m["diverged"] == 1.0 and m["stable"] == 0.0
    worse = make_run(steps=30, loss=1.0, val_loss=[1.5, 1.4, 1.3])  # ends above step 1's loss
    assert study.run_metrics(worse)["stable"] == 0.0
    assert all(np.isnan(v) for v in study.run_metrics(None).values())


def test_run_metrics_unlearning():
    steps = 400
    acc = rise_then_fall(steps, peak=0.9, peak_step=100, onset=250, slope=0.004)
    zeroed = np.clip((np.arange(steps) - 150) / 100, 0, 1)  # rises well before the onset
    tree = make_run(steps=steps, accuracy=acc, zeroed=zeroed, config={"constraint.sign": "synapse"})
    m = study.run_metrics(tree)
    assert m["peak_accuracy"] == pytest.approx(0.9, abs=0.02)
    assert m["unlearning_drop"] == pytest.approx(0.9 - acc[-1], abs=0.03)
    assert 240 <= m["onset_step"] <= 275
    assert m["flips_lead"] == 1.0

    late = np.clip((np.arange(steps) - 330) / 30, 0, 1)  # zeroing only after the fall began
    m = study.run_metrics(make_run(steps=steps, accuracy=acc, zeroed=late))
    assert m["flips_lead"] == 0.0

    flat = make_run(steps=steps, accuracy=np.linspace(0.1, 0.9, steps))
    m = study.run_metrics(flat)
    assert np.isnan(m["onset_step"]) and np.isnan(m["flips_lead"])
    assert m["unlearning_drop"] == pytest.approx(0.0, abs=0.01)


def test_run_metrics_autoencoder():
    x = probe_inputs()
    m = study.run_metrics(autoencoder_run(x, x))
    assert m["final_fvu"] == pytest.approx(0.0, abs=1e-9)
    assert m["fvu_ratio_mean_image"] == pytest.approx(0.0, abs=1e-9)
    assert m["specificity"] == pytest.approx(1.0)
    mean_image = np.broadcast_to(x.mean(axis=0), x.shape)
    m = study.run_metrics(autoencoder_run(mean_image, x, data_dir="/nonexistent"))
    assert m["final_fvu"] == pytest.approx(1.0) and m["specificity"] == pytest.approx(0.0)


# ------------------------------------------------------------------------------ per arm


def test_summary_matches_the_stores(grid_study, grid_summary):
    s = grid_summary
    assert s["best_val_accuracy"].dims == ("arm", "seed")
    assert list(s["seed"].values) == [0, 1]
    assert list(s["rule.name"].values) == ["bp", "bp", "fa", "fa"]
    assert list(s["model.depth"].values) == [2, 3, 2, 3]
    for arm, seed, store in study_runs(grid_study):
        got = s.sel(arm=arm, seed=seed)
        if not store.exists():
            assert got["status"].item() == "pending"
            assert np.isnan(got["best_val_accuracy"]) and np.isnan(got["initial_loss"])
            continue
        run = open_run(store)
        val = run["epochs"]["val_accuracy"].values.astype(float)
        assert got["status"].item() == "completed"
        assert float(got["best_val_accuracy"]) == pytest.approx(val.max())
        assert float(got["final_val_accuracy"]) == pytest.approx(val[-1])
        assert float(got["train_accuracy_epoch_1"]) == pytest.approx(
            float(run["epochs"]["train_accuracy"].values[0])
        )
        assert np.isnan(got["train_accuracy_epoch_5"])
        assert float(got["initial_loss"]) == pytest.approx(float(run["steps"]["loss"].values[0]))
        assert float(got["epochs_recorded"]) == 2.0
    angle = s["update_angle_plateau"]
    assert (angle.sel(arm=["rule=bp,depth=2", "rule=bp,depth=3"]) < 1).all()  # BP: exact
    assert (angle.sel(arm="rule=fa,depth=2") > 45).all()  # FA: far from the gradient


def test_arm_table_against_direct_computation(grid_summary):
    table = study.arm_table(grid_summary, n_boot=500, seed=3)
    assert table["mean"].dims == ("arm", "metric")
    for arm in grid_summary["arm"].values:
        for metric in ("best_val_accuracy", "initial_loss", "update_angle_plateau"):
            values = grid_summary[metric].sel(arm=arm).values
            finite = values[np.isfinite(values)]
            cell = table.sel(arm=arm, metric=metric)
            assert float(cell["n"]) == finite.size
            assert float(cell["mean"]) == pytest.approx(finite.mean())
            low, high = bootstrap_ci(values, n=500, seed=3)
            np.testing.assert_allclose(
                [float(cell["ci_low"]), float(cell["ci_high"])], [low, high], equal_nan=True
            )
    one_seed = table.sel(arm="rule=fa,depth=3", metric="best_val_accuracy")
    assert float(one_seed["n"]) == 1 and np.isnan(float(one_seed["ci_low"]))
    assert list(table["done"].values) == [2, 2, 2, 1]
    assert list(table["model.depth"].values) == [2, 3, 2, 3]
    values = study.arm_values(table)
    assert values["rule=fa,depth=3"]["best_val_accuracy"]["n"] == 1
    assert values["rule=fa,depth=3"]["best_val_accuracy"]["ci_low"] is None
    with pytest.raises(AnalysisError, match="no metric"):
        study.arm_table(grid_summary, ["val_accuracy_epoch_3"])


def test_table_leaves_out_empty_columns(grid_summary):
    text = study.table(grid_summary)
    head = text.splitlines()[1]
    for column in ("arm", "done", "best val %", "final val %", "train@1 %", "angle °"):
        assert column in head
    for column in ("train@5 %", "train@10 %", "FVU"):  # NaN for every arm
        assert column not in head
    bp = next(line for line in text.splitlines() if line.startswith("rule=bp,depth=2"))
    mean = float(grid_summary["best_val_accuracy"].sel(arm="rule=bp,depth=2").mean())
    assert f"{100 * mean:.1f} [" in bp
    assert "2/2" in bp


def test_summarise_groups_a_list_of_runs_by_config():
    runs = [
        make_run(steps=20, val_accuracy=[v, v], config={"rule.name": r, "train.seed": s})
        for r, v in (("bp", 0.8), ("fa", 0.6))
        for s in (0, 1, 2)
    ]
    s = study.summarise(runs)
    assert list(s["arm"].values) == ["rule=bp", "rule=fa"]
    assert list(s["seed"].values) == [0, 1, 2]
    assert list(s["rule.name"].values) == ["bp", "fa"]
    np.testing.assert_allclose(s["best_val_accuracy"].values, [[0.8] * 3, [0.6] * 3])
    with pytest.raises(AnalysisError, match="share the arm"):
        study.summarise([runs[0], runs[0]])


def test_plot_curves_draw_a_band_per_arm(grid_study):
    tree = open_study(grid_study)
    fig = study.plot_curves(tree, "val_accuracy")
    ax = fig.axes[0]
    assert len(ax.lines) == 4  # one mean curve per arm
    assert len([c for c in ax.collections if isinstance(c, PolyCollection)]) == 3  # 1-seed arm
    assert "rule=fa,depth=3 (n=1)" in [t.get_text() for t in fig.legends[0].get_texts()]
    mean = tree["epochs"]["val_accuracy"].sel(rule="bp", depth=2).mean("seed").values
    np.testing.assert_allclose(ax.lines[0].get_ydata(), mean)
    assert len(study.plot_loss(tree).axes) == 2
    assert len(study.plot_accuracy(open_study(grid_study, dims="arm")).axes) == 2
    with pytest.raises(AnalysisError, match="no curve"):
        study.plot_curves(tree, "accuracy")


def test_study_figures_are_titled_labelled_and_draw_cleanly(grid_study):
    tree = open_study(grid_study)
    accuracy = study.plot_accuracy(tree)
    check_figure(accuracy, units=("(fraction)", "epoch"))
    assert accuracy.get_suptitle().startswith("demo: mean over seeds")
    assert [ax.get_title() for ax in accuracy.axes] == [
        "Training accuracy per epoch",
        "Validation accuracy per epoch",
    ]
    check_figure(study.plot_loss(tree), units=("(per sample)", "step", "epoch"))
    legend = [t.get_text() for t in accuracy.legends[0].get_texts()]
    assert len(legend) == 4  # one entry per arm, shared by both panels
    check_captions(study)


# ------------------------------------------------------------------------------ commands


def _invoke(args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def test_inspect_a_study(grid_study):
    result = _invoke(["inspect", grid_study])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "study demo" in out and "the demo study" in out
    assert "rule=fa,depth=3  1/2 done, 1 pending; seeds: 0 completed (12 steps), 1 pending" in out
    assert "best val %" in out and "rule=bp,depth=2   2/2" in out

    result = _invoke(["inspect", grid_study, "--json"])
    info = json.loads(result.stdout)
    assert info["kind"] == "study" and info["runs"] == {"completed": 7, "pending": 1}
    arm = info["arms"][3]
    assert arm["name"] == "rule=fa,depth=3" and arm["runs"][1]["status"] == "pending"
    cell = info["summary"]["rule=bp,depth=2"]["best_val_accuracy"]
    assert set(cell) == {"mean", "ci_low", "ci_high", "n"} and cell["n"] == 2


def test_inspect_names_failed_runs_and_bad_manifests(named_study, tmp_path):
    result = _invoke(["inspect", named_study])
    assert "seed 1 failed: ValueError: boom" in result.output
    assert "seed 1 unreadable:" in result.output
    (tmp_path / "study.json").write_text("[")
    result = CliRunner().invoke(cli, ["inspect", str(tmp_path)])
    assert result.exit_code == 2 and "study.json is damaged" in result.output


def test_analyze_a_study(grid_study, grid_summary, tmp_path):
    result = _invoke(["analyze", grid_study])
    assert result.exit_code == 0 and "best val %" in result.output

    result = _invoke(["analyze", grid_study, "--json", "--out", tmp_path / "s.nc"])
    body = json.loads(result.stdout)
    assert "saved 1 summary file(s)" in result.stderr
    mean = float(grid_summary["best_val_accuracy"].sel(arm="rule=fa,depth=2").mean())
    assert body["arms"]["rule=fa,depth=2"]["best_val_accuracy"]["mean"] == pytest.approx(mean)
    assert body["status"]["rule=fa,depth=3"]["1"] == "pending"
    saved = xr.open_dataset(tmp_path / "s.nc", engine="h5netcdf")
    np.testing.assert_allclose(
        saved["best_val_accuracy"].values, grid_summary["best_val_accuracy"].values
    )
    arms = xr.open_dataset(tmp_path / "s.nc", group="arms", engine="h5netcdf")
    assert arms["mean"].dims == ("arm", "metric")

    bad = CliRunner().invoke(cli, ["analyze", str(grid_study), "--only", "alignment"])
    assert bad.exit_code == 2 and "--only and --set-param apply to run stores" in bad.output
    store = grid_study / "runs/rule=bp,depth=2/seed-0.zarr"
    mixed = CliRunner().invoke(cli, ["analyze", str(store), str(grid_study)])
    assert mixed.exit_code == 2 and "is a study directory" in mixed.output


def test_report_on_a_study_and_a_reproduction(grid_study, named_study, tmp_path):
    out = tmp_path / "study.html"
    result = _invoke(["report", grid_study, "--out", out, "--runs", "none", "--quiet"])
    assert result.exit_code == 0, result.output
    page = _parse(out)
    text = "".join(page.text)
    assert ("h2", "Study demo") in page.headings
    assert "best val %" in text and "rule=fa,depth=3" in text
    assert len(page.images) == 2  # accuracy and loss curves with CI bands
    assert "rule=bp,depth=2, seed 0" not in text  # --runs none: no run sections

    repro = tmp_path / "repro"
    shutil.copytree(named_study, repro / "finding-1")
    criterion = {"name": "same", "test": "within", "effect": 0.01, "low": -0.01, "high": 0.02}
    verdict = {"number": 1, "title": "Lengths agree", "claim": "they do", "study": "finding-1"}
    verdict.update(runs={"completed": 2}, verdict="inconclusive")
    verdict["criteria"] = [{**criterion, "n": 1, "verdict": "inconclusive"}]
    (repro / "findings.json").write_text(json.dumps([verdict]))
    info = json.loads(_invoke(["inspect", repro, "--json"]).stdout)
    assert info["kind"] == "reproduction" and info["studies"][0]["name"] == "lengths"
    out = tmp_path / "repro.html"
    result = _invoke(["report", repro, "--out", out, "--quiet"])
    assert result.exit_code == 0, result.output
    page = _parse(out)
    assert ("h1", "dynalign reproduction: repro") in page.headings
    markup = out.read_text()
    assert markup.index("Lengths agree") < markup.index('id="study-finding-1"')  # table first
    assert "href='#study-finding-1'" in markup
    text = "".join(page.text)
    assert ("h2", "Study lengths") in page.headings
    assert "short, seed 0" in text and "unlearning — seed-0" in text  # run sections: tables
    assert len(page.images) == 2  # and no figures of their own
    assert "ValueError: boom" in text

    store = grid_study / "runs/rule=bp,depth=2/seed-0.zarr"
    bad = CliRunner().invoke(cli, ["report", str(store), "--runs", "full", "--out", str(out)])
    assert bad.exit_code == 2 and "--runs applies to study directories" in bad.output
