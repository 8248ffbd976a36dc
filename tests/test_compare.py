"""dynalign.analyses.compare on sets of synthetic runs whose per-arm means are planted."""

from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr
from matplotlib.figure import Figure
from scipy import stats
from synthetic_stores import make_run, read_run, write_run

from dynalign.analyses import compare
from dynalign.analyses.smoothing import AnalysisError, bootstrap_ci

EPOCHS = 4
STEPS = EPOCHS * 5


def _spread(k: int, sd: float) -> np.ndarray:
    """k deviations with mean exactly 0 and a sample sd close to ``sd`` (normal quantiles)."""
    dev = stats.norm.ppf((np.arange(k) + 0.5) / k) * sd
    return dev - dev.mean()


def _run(best: float, seed: int, **config) -> xr.DataTree:
    """A run whose val accuracy climbs linearly to ``best`` in the last epoch."""
    val = np.linspace(0.1, best, EPOCHS)
    return make_run(
        steps=STEPS,
        steps_per_epoch=5,
        val_accuracy=val,
        train_accuracy=val + 0.1,
        val_loss=2.0 - val,
        config={"train.seed": seed, **config},
    )


def _two_arms(k: int, sd: float = 0.02) -> list[xr.DataTree]:
    dev = _spread(k, sd)
    bp = [_run(0.50 + d, s, **{"rule.name": "bp"}) for s, d in enumerate(dev)]
    fa = [_run(0.45 + d, s, **{"rule.name": "fa"}) for s, d in enumerate(dev)]
    return bp + fa


# ------------------------------------------------------------------------------ bootstrap


def test_bootstrap_ci_agrees_with_scipy_percentile_bootstrap():
    values = np.random.default_rng(1).normal(3.0, 2.0, size=12)
    low, high = bootstrap_ci(values, n=20000, level=0.9, seed=0)
    ref = stats.bootstrap(
        (values,),
        np.mean,
        n_resamples=20000,
        confidence_level=0.9,
        method="percentile",
        random_state=np.random.default_rng(5),
    ).confidence_interval
    # independent resamples: endpoints agree to Monte-Carlo precision (~0.02 of the sd here)
    assert low == pytest.approx(ref.low, abs=0.05)
    assert high == pytest.approx(ref.high, abs=0.05)


def test_bootstrap_ci_is_seeded_and_undefined_for_one_value():
    values = np.array([0.1, 0.4, 0.35, 0.2, np.nan])
    assert bootstrap_ci(values, seed=3) == bootstrap_ci(values, seed=3)
    assert np.isnan(bootstrap_ci(np.array([0.5]))).all()
    with pytest.raises(AnalysisError, match="level"):
        bootstrap_ci(values, level=1.5)


# ------------------------------------------------------------------------------ arms


def test_two_arms_give_their_planted_means_inside_their_cis():
    result = compare.analyze(_two_arms(6))
    assert list(result["arm"].values) == ["rule.name=bp", "rule.name=fa"]
    mean = result["best_val_accuracy_mean"]
    np.testing.assert_allclose(mean, [0.50, 0.45], atol=1e-6)  # float32 storage
    assert (result["best_val_accuracy_low"] < mean).all()
    assert (result["best_val_accuracy_high"] > mean).all()
    assert (result["n_runs"] == 6).all()
    # learning curves: the arm mean of linear curves is the linear curve to the arm mean
    np.testing.assert_allclose(
        result["val_accuracy_mean"].sel(arm="rule.name=fa"),
        np.linspace(0.1, 0.45, EPOCHS),
        atol=1e-6,
    )


def test_ci_width_shrinks_with_more_seeds():
    def width(k: int) -> float:
        r = compare.analyze(_two_arms(k))
        return float(
            (r["best_val_accuracy_high"] - r["best_val_accuracy_low"]).sel(arm="rule.name=bp")
        )

    w4, w16 = width(4), width(16)
    assert w16 < 0.75 * w4  # the CI of a mean narrows like 1/sqrt(k): about half here


def test_one_run_arms_have_no_ci_and_the_table_says_so():
    result = compare.analyze([_run(0.5, 0), _run(0.4, 0, **{"rule.name": "bp"})])
    assert np.isnan(result["best_val_accuracy_low"]).all()
    text = compare.table(result)
    assert "'-' with one run" in text and "[" not in text.splitlines()[3]


# ------------------------------------------------------------------------------ per run


def test_only_varying_config_keys_become_run_coordinates():
    result = compare.analyze(_two_arms(2))
    assert "rule.name" in result.coords and "train.seed" in result.coords
    assert "model.depth" not in result.coords
    assert result["train.seed"].dtype == np.int64
    assert result["rule.name"].dims == ("run",)
    assert json.loads(result.attrs["varying_keys"]) == ["rule.name", "train.seed"]


def test_learning_curves_are_nan_padded_to_a_common_epoch_axis():
    short = make_run(steps=10, steps_per_epoch=5, val_accuracy=[0.2, 0.6])
    long = make_run(steps=30, steps_per_epoch=5, val_accuracy=np.linspace(0.1, 0.7, 6))
    result = compare.analyze([short, long], names=["short", "long"])
    assert result["val_accuracy"].shape == (2, 6)
    assert np.isnan(result["val_accuracy"].sel(run="short", epoch=slice(3, 6))).all()
    assert float(result["best_val_accuracy"].sel(run="short")) == pytest.approx(0.6)
    assert float(result["best_epoch"].sel(run="long")) == 6
    assert float(result["final_val_accuracy"].sel(run="short")) == pytest.approx(0.6)


def test_hidden_layer_update_angle_plateau_is_tabulated_per_run():
    angles = np.column_stack([np.full(STEPS, 40.0), np.full(STEPS, 50.0), np.zeros(STEPS)])
    fa = make_run(steps=STEPS, layers=["fc1", "fc2", "fc3"], update_angle=angles)
    bp = make_run(steps=STEPS, config={"rule.name": "bp"})
    result = compare.analyze([fa, bp], names=["fa", "bp"])
    np.testing.assert_allclose(result["update_angle_plateau"], [45.0, 0.0])
    assert "update angle" in compare.table(result)


def test_runs_read_from_zarr_are_named_after_their_stores(tmp_path):
    paths = [
        write_run(t, tmp_path / f"{n}.zarr")
        for t, n in zip(_two_arms(1), ["bp0", "fa0"], strict=True)
    ]
    result = compare.analyze([read_run(p) for p in paths])
    assert list(result["run"].values) == ["bp0", "fa0"]
    runs = json.loads(result.attrs["runs"])
    assert runs[0]["source"].endswith("bp0.zarr") and runs[0]["status"] == "completed"


# ------------------------------------------------------------------------------ groupings


def _ablation() -> list[xr.DataTree]:
    runs = []
    for depth in (3, 8):
        for bn in ("none", "standard", "noaffine"):
            for seed in range(2):
                best = 0.3 + 0.02 * depth + (0.1 if bn != "none" else 0.0) + 0.01 * seed
                runs.append(
                    _run(
                        best,
                        seed,
                        **{
                            "model.depth": depth,
                            "model.batch_norm": bn,
                            "model.activation": "relu" if seed else "mixed_relu",
                        },
                    )
                )
    return runs


def test_named_groupings_make_one_row_per_arm():
    result = compare.analyze(_ablation(), by=["model.depth", "model.batch_norm"])
    assert result.sizes["arm"] == 6
    grouped = compare.arms(result, "depth_batch_norm")
    assert grouped.sizes["arm"] == 6
    sel = (grouped["model.depth"] == 8) & (grouped["model.batch_norm"] == "standard")
    assert grouped["best_val_accuracy_mean"].where(sel, drop=True).item() == pytest.approx(0.565)

    text = compare.table(result, by="batch_norm")  # rule.name is constant here: one value
    rows = [line for line in text.splitlines() if line.startswith("fa ")]
    assert len(rows) == 3 and all(" 4 " in row for row in rows)  # 2 depths x 2 seeds each
    assert "pooled across: model.activation, model.depth, train.seed" in text

    assert compare.analyze(_ablation(), by="batch_norm").sizes["arm"] == 3
    by_rule = compare.arms(result, "rule")
    assert by_rule.sizes["arm"] == 1 and by_rule["n_runs"].item() == 12
    assert compare.arms(result, "activation").sizes["arm"] == 6
    assert "model.activation" in compare.table(result, by=["model.activation"])


def test_unknown_grouping_keys_raise_clear_errors():
    result = compare.analyze(_two_arms(2))
    with pytest.raises(AnalysisError, match="unknown grouping key 'model.dpeth'"):
        compare.arms(result, ["model.dpeth"])
    with pytest.raises(AnalysisError, match="unknown grouping 'bn'"):
        compare.table(result, by="bn")
    with pytest.raises(AnalysisError, match="at least one run"):
        compare.analyze([])
    with pytest.raises(AnalysisError, match="names"):
        compare.analyze(_two_arms(1), names=["only one"])


# ------------------------------------------------------------------------------ output


def test_plot_learning_curves_draws_a_mean_and_a_band_per_arm():
    result = compare.analyze(_two_arms(3))
    fig = compare.plot_learning_curves(result)
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    for ax in fig.axes:
        assert len(ax.get_lines()) == 2 and len(ax.collections) == 2
    one = compare.plot_learning_curves(result, by=[], variables=["val_loss"])
    assert len(one.axes) == 1 and len(one.axes[0].get_lines()) == 1


def test_result_stores_in_zarr_and_keeps_units(tmp_path):
    result = compare.analyze(_two_arms(2))
    for name, var in result.data_vars.items():
        assert "units" in var.attrs and "long_name" in var.attrs, name
    result.to_zarr(tmp_path / "compare.zarr", zarr_format=3, consolidated=False)
    again = xr.open_zarr(tmp_path / "compare.zarr", consolidated=False).load()
    xr.testing.assert_allclose(again.reset_coords(drop=True), result.reset_coords(drop=True))
    assert compare.table(again) == compare.table(result)


# ------------------------------------------------------------------------------ arms: names


def test_runs_differing_only_in_how_they_ran_pool_into_one_arm():
    how = [
        {"train.threads": 1, "train.device": "cpu", "probes.every": 1},
        {"train.threads": 4, "train.device": "cuda", "probes.every": 5},
        {"data.data_dir": "/somewhere", "probes.snapshot_every": 10},
    ]
    runs = [_run(0.5 + 0.01 * s, s, **extra) for s, extra in enumerate(how)]
    runs.append(_run(0.4, 0, **{"rule.name": "bp", "train.threads": 2}))
    result = compare.analyze(runs)
    assert list(result["n_runs"].values) == [3, 1]
    assert json.loads(result.attrs["parameters"])["by"] == ["rule.name"]
    assert list(result["arm_name"].values) == ["fc3-fa", "fc3-bp"]  # both are shipped presets
    assert "train.threads" in json.loads(compare.arms(result).attrs["pooled"])
    assert compare.excluded("probes.every") and not compare.excluded("train.epochs")


def test_arm_names_are_short_and_presets_only_when_every_arm_is_one():
    runs = [_run(0.5, 0), _run(0.6, 0, **{"rule.name": "bp"})]
    runs.append(_run(0.4, 0, **{"model.depth": 5, "model.batch_norm": "standard"}))
    result = compare.analyze(runs)
    # rule first, bare; other keys short; a preset name would hide the depth of its arm
    assert list(result["arm_name"].values) == [
        "fa bn=none depth=3",
        "bp bn=none depth=3",
        "fa bn=standard depth=5",
    ]
    assert compare.short_name(
        ["model.excitatory_fraction", "constraint.excitatory_fraction"], [0.5, 0.8]
    ) == ("model.excitatory_fraction=0.5 constraint.excitatory_fraction=0.8")
    assert list(compare.arms(result, by=[])["arm_name"].values) == ["all"]


def test_long_key_names_give_way_to_the_arms_common_run_names():
    """Arms differing in many keys are named by what their runs' names share, seed aside."""
    many = {"model.depth": 5, "model.width": 64, "train.lr": 0.05, "train.batch_size": 50}
    runs = [_run(0.5, s) for s in (0, 1)] + [_run(0.6, s, **many) for s in (0, 1)]
    names = ["fa-wide-s0", "fa-wide-s1", "fa-narrow-s0", "fa-narrow-s1"]
    result = compare.analyze(runs, names=names)
    assert list(result["arm_name"].values) == ["fa-wide", "fa-narrow"]
    assert compare.run_stem(["bp-seed0", "bp-seed1"]) == "bp"
    assert compare.run_stem(["fa-digits"]) == "fa-digits"
    # short enough: the keys stay, they say what differs
    deeper = [runs[0], _run(0.6, 0, **{"model.depth": 5})]
    short = compare.analyze(deeper, names=["x", "y"])
    assert list(short["arm_name"].values) == ["depth=3", "depth=5"]


def test_every_arm_gets_its_own_fixed_colour():
    result = compare.analyze(_two_arms(2))
    assert list(result["arm_color"].values) == compare.arm_colors(2)
    for n in (2, 10, 11, 30, 50):
        assert len(set(compare.arm_colors(n))) == n
    # the same arm keeps its colour whatever is plotted from the result
    grouped = compare.arms(result)
    assert list(grouped["arm_color"].values) == list(result["arm_color"].values)


def _many_arms(n_rules: int = 3, per_rule: int = 10) -> list[xr.DataTree]:
    rules = ["bp", "fa", "dfa", "kp"][:n_rules]
    return [
        _run(
            0.4 + 0.01 * d, 0, **{"rule.name": r, "model.depth": d + 1, "train.lr": 0.01 * (d + 1)}
        )
        for r in rules
        for d in range(per_rule)
    ]


def _draw(fig: Figure) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig).draw()


@pytest.mark.parametrize("n_rules, per_rule", [(1, 2), (1, 30), (3, 10)])
def test_comparison_figures_stay_legible_from_2_to_30_arms(n_rules, per_rule):
    import warnings

    result = compare.analyze(_many_arms(n_rules, per_rule))
    n_arms = n_rules * per_rule
    assert result.sizes["arm"] == n_arms
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        curves = compare.plot_learning_curves(result)
        dots = compare.plot_best_accuracy(result)
        for fig in (curves, dots):
            _draw(fig)
    assert not caught, [str(w.message) for w in caught]  # constrained_layout did not give up
    for fig in (curves, dots):
        for ax in fig.axes:
            box = ax.get_position()
            assert box.width > 0.15 and box.height > 0.1, box
    # the legend sits outside the axes, one entry per arm
    (legend,) = curves.legends
    assert len(legend.get_texts()) == n_arms
    assert legend.get_window_extent().x0 >= max(ax.get_window_extent().x1 for ax in curves.axes)
    # many arms: one row of panels per rule
    assert len(curves.axes) == 2 * (n_rules if n_arms >= compare.FACET_FROM else 1)
    assert len(dots.axes[0].get_yticklabels()) == n_arms


def test_comparison_and_run_curve_figures_are_titled_and_labelled():
    from test_alignment import check_figure

    from dynalign.analyses.curves import plot_run_curves

    runs = _two_arms(2)
    result = compare.analyze(runs)
    check_figure(compare.plot_learning_curves(result), units=("fraction", "epoch"))
    check_figure(compare.plot_best_accuracy(result), units=("%",))
    curves = plot_run_curves(runs[0])
    assert "Learning curves" in curves.get_suptitle()
    for ax in curves.axes:
        assert ax.get_xlabel() == "epoch" and "(" in ax.get_ylabel()  # a unit or what it is
