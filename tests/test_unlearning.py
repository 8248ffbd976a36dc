"""dynalign.analyses.unlearning on synthetic runs with a planted rise, fall and zeroing."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from matplotlib.figure import Figure
from synthetic_stores import make_run, read_run, rise_then_fall, write_run
from test_alignment import check_captions, check_figure

from dynalign.analyses import figures, unlearning
from dynalign.analyses.smoothing import AnalysisError

STEPS = 600
ONSET = 300  # the planted accuracy holds 0.9 from step 100 to ONSET, then falls
SLOPE = 0.004  # per step
MARGIN = 0.05
# The margin rule fires once the curve is MARGIN below its peak: ONSET + MARGIN / SLOPE.
TRUE_MARGIN_ONSET = ONSET + MARGIN / SLOPE
# Tolerance 10 steps: the smoothed peak of a noisy plateau sits up to ~3 smoothed-noise sd
# (0.02 / sqrt(12) each) above 0.9, which moves the margin onset earlier by up to 0.017/SLOPE
# ~ 4 steps; the hinge fit's breakpoint scatters by a few steps at this noise level.
TOLERANCE = 10


def _accuracy(seed: int = 0, noise: float = 0.02) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rise_then_fall(STEPS, 0.9, 100, ONSET, SLOPE) + rng.normal(0, noise, STEPS)


def _logistic(center: float, width: float = 20.0, top: float = 0.4) -> np.ndarray:
    step = np.arange(1, STEPS + 1)
    return top / (1 + np.exp(-(step - center) / width))


def _sign_run(accuracy, zeroed=None, flips=None, **kwargs) -> xr.DataTree:
    return make_run(
        steps=STEPS,
        layers=["fc1", "fc2"],
        accuracy=accuracy,
        zeroed=zeroed,
        attempted_flips=flips,
        config={"constraint.sign": "synapse"},
        **kwargs,
    )


# ------------------------------------------------------------------------------ estimates


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_planted_drop_gives_back_its_onset_with_both_estimates(seed):
    result = unlearning.analyze(_sign_run(_accuracy(seed)), margin=MARGIN)
    assert bool(result["unlearning"])
    assert result.attrs["verdict"].startswith("unlearning:")
    onset = result["onset_step"]
    assert abs(float(onset.sel(estimate="margin")) - TRUE_MARGIN_ONSET) <= TOLERANCE
    assert abs(float(onset.sel(estimate="hinge")) - ONSET) <= TOLERANCE
    assert float(result["peak_accuracy"]) == pytest.approx(0.9, abs=0.03)
    assert 100 - TOLERANCE <= float(result["peak_step"]) <= ONSET + TOLERANCE
    assert float(result["hinge_slope_after"]) == pytest.approx(-SLOPE, rel=0.15)


def test_hinge_fit_recovers_a_noiseless_breakpoint_and_slopes():
    t = np.arange(100, 500, dtype=float)
    y = np.where(t < 273.4, 0.8 + 1e-4 * (t - 273.4), 0.8 - 3e-3 * (t - 273.4))
    fit = unlearning.hinge_fit(t, y)
    assert fit["breakpoint"] == pytest.approx(273.4, abs=0.05)
    assert fit["slope_before"] == pytest.approx(1e-4, rel=1e-3)
    assert fit["slope_after"] == pytest.approx(-3e-3, rel=1e-3)
    assert fit["level"] == pytest.approx(0.8, abs=1e-4)


def test_margin_onset_on_a_short_hand_made_curve():
    steps = np.arange(1, 9, dtype=float)
    curve = np.array([0.1, 0.5, 0.9, 0.88, 0.84, 0.87, 0.7, 0.6])
    # peak 0.9 at index 2; 0.87 >= 0.85 at step 6 is the last time within the margin
    assert unlearning.margin_onset(steps, curve, 2, 0.05) == 7
    assert np.isnan(unlearning.margin_onset(steps, curve[:6], 2, 0.05))


def test_monotone_curve_reports_no_unlearning():
    rng = np.random.default_rng(4)
    rising = 0.1 + 0.8 * (1 - np.exp(-np.arange(STEPS) / 80)) + rng.normal(0, 0.02, STEPS)
    result = unlearning.analyze(make_run(steps=STEPS, accuracy=rising))
    assert not bool(result["unlearning"])
    assert result.attrs["verdict"].startswith("no unlearning")
    assert np.isnan(result["onset_step"]).all()
    assert "no unlearning" in unlearning.table(result)


def test_dip_that_recovers_is_not_unlearning():
    acc = rise_then_fall(STEPS, 0.9, 100, 250, SLOPE)
    acc[250:400] = np.maximum(acc[250:400], 0.7)
    acc[400:] = 0.9  # back at the peak by the end
    result = unlearning.analyze(make_run(steps=STEPS, accuracy=acc))
    assert not bool(result["unlearning"])
    assert "ends within" in result.attrs["verdict"]


def test_curve_that_only_falls_never_rose():
    acc = np.linspace(0.5, 0.1, STEPS)
    result = unlearning.analyze(make_run(steps=STEPS, accuracy=acc))
    assert not bool(result["unlearning"])
    assert "never rose" in result.attrs["verdict"]


# ------------------------------------------------------------------------------ zeroing


def test_zeroing_that_rises_before_the_drop_leads_with_a_positive_lag():
    result = unlearning.analyze(_sign_run(_accuracy(), zeroed=_logistic(200.0)))
    # the logistic starts near 0 and tops out near 0.4, so half its rise is at its centre
    assert float(result["zeroing_step_mean"]) == pytest.approx(200, abs=2)
    lag = result["lag"]
    assert float(lag.sel(estimate="hinge")) == pytest.approx(ONSET - 200, abs=TOLERANCE + 2)
    assert float(lag.sel(estimate="margin")) > 0


def test_zeroing_that_rises_after_the_drop_lags_with_a_negative_lag():
    result = unlearning.analyze(_sign_run(_accuracy(), zeroed=_logistic(450.0)))
    assert (result["lag"] < 0).all()


def test_zeroed_fraction_and_flip_rate_at_onset_are_read_off_the_series():
    step = np.arange(1, STEPS + 1, dtype=float)
    ramp = 1e-3 * step  # linear, so smoothing leaves it unchanged away from the ends
    flips = np.column_stack([10 + 0.1 * step, 20 + 0.1 * step])
    result = unlearning.analyze(
        _sign_run(_accuracy(), zeroed=np.column_stack([ramp, 2 * ramp]), flips=flips, probe_every=4)
    )
    for est in ("margin", "hinge"):
        onset = float(result["onset_step"].sel(estimate=est))
        zeroed = result["zeroed_at_onset"].sel(estimate=est)
        assert float(zeroed.sel(layer="fc1")) == pytest.approx(1e-3 * onset, rel=1e-6)
        assert float(zeroed.sel(layer="fc2")) == pytest.approx(2e-3 * onset, rel=1e-6)
        assert float(result["zeroed_mean_at_onset"].sel(estimate=est)) == pytest.approx(
            1.5e-3 * onset, rel=1e-6
        )
        assert float(result["attempted_flips_mean_at_onset"].sel(estimate=est)) == pytest.approx(
            15 + 0.1 * onset, rel=1e-6
        )


def test_unconstrained_run_without_zeroing_has_no_lag():
    result = unlearning.analyze(make_run(steps=STEPS, accuracy=_accuracy()))
    assert bool(result["unlearning"])  # the drop is still found
    assert np.isnan(result["zeroing_step_mean"]) and np.isnan(result["lag"]).all()


# ------------------------------------------------------------------------------ val curve


def test_validation_curve_is_analysed_at_epoch_ends(tmp_path):
    epochs = 60
    per_epoch = rise_then_fall(epochs, 0.8, 10, 30, 0.02)  # falls from epoch 30
    tree = _sign_run(None, steps_per_epoch=10, val_accuracy=per_epoch)
    result = unlearning.analyze(read_run(write_run(tree, tmp_path / "val.zarr")), curve="val")
    assert bool(result["unlearning"])
    # epoch e ends at step 10 e; the margin is crossed 0.05/0.02 = 2.5 epochs after epoch 30
    assert float(result["onset_step"].sel(estimate="margin")) == 10 * 33
    assert abs(float(result["onset_step"].sel(estimate="hinge")) - 10 * 30) <= 10
    assert result.attrs["source"].endswith("val.zarr")


# ------------------------------------------------------------------------------ interface


def test_applies_to_sign_constrained_and_classification_runs():
    assert unlearning.applies(make_run(steps=5))
    assert unlearning.applies(_sign_run(None))
    ae = make_run(steps=5, config={"model.kind": "autoencoder"})
    assert not unlearning.applies(ae)
    with pytest.raises(AnalysisError, match="autoencoder run, which has no accuracy"):
        unlearning.analyze(ae)


@pytest.mark.parametrize("params", [{"margin": 0}, {"curve": "test"}, {"window": -1}])
def test_bad_parameters_raise_clear_errors(params):
    with pytest.raises(AnalysisError, match=next(iter(params))):
        unlearning.analyze(make_run(steps=20), **params)


def test_result_attrs_and_units():
    result = unlearning.analyze(_sign_run(_accuracy()), window=7)
    for name, var in result.data_vars.items():
        assert "units" in var.attrs and "long_name" in var.attrs, name
    assert '"window": 7' in result.attrs["parameters"]
    assert result.attrs["analysis"] == "unlearning"


def test_plot_marks_peak_onsets_and_fit_on_the_accuracy():
    result = unlearning.analyze(_sign_run(_accuracy(), zeroed=_logistic(200.0)))
    fig = unlearning.plot_unlearning(result)
    assert isinstance(fig, Figure) and len(fig.axes) == 1
    labels = {line.get_label() for line in fig.axes[0].get_lines()}
    assert {"smoothed", "peak", "onset (margin)", "onset (hinge)", "hinge fit"} <= labels
    assert "zeroed fraction" not in labels  # zeroing has its own figure

    flat = unlearning.analyze(make_run(steps=STEPS, accuracy=np.linspace(0.1, 0.9, STEPS)))
    flat_labels = {
        line.get_label() for line in unlearning.plot_unlearning(flat).axes[0].get_lines()
    }
    assert not any(label.startswith("onset") for label in flat_labels)


def test_zeroing_figure_only_for_sign_constrained_runs():
    dale = unlearning.analyze(_sign_run(_accuracy(), zeroed=_logistic(200.0)))
    assert dale.attrs["constraint"] == "synapse"
    fig = unlearning.plot_zeroing(dale)
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    ylabels = [ax.get_ylabel() for ax in fig.axes]
    assert "exactly 0" in ylabels[0] and "flips" in ylabels[1]
    lines = {line.get_label() for line in fig.axes[0].get_lines()}
    assert {"fc1", "fc2", "mean over layers", "onset (margin)"} <= lines
    assert [name for name, _ in figures(unlearning, dale)] == ["plot_unlearning", "plot_zeroing"]

    free = unlearning.analyze(make_run(steps=STEPS, accuracy=_accuracy()))
    assert free.attrs["constraint"] == "none"
    assert unlearning.plot_zeroing(free) is None
    assert [name for name, _ in figures(unlearning, free)] == ["plot_unlearning"]
    del free.attrs["constraint"]  # an older result: the constraint comes from its config
    assert not unlearning.is_constrained(free)


def test_table_shows_zeroing_only_for_sign_constrained_runs():
    dale = unlearning.table(unlearning.analyze(_sign_run(_accuracy(), zeroed=_logistic(200.0))))
    assert "zeroed at onset" in dale and "lag" in dale
    free = unlearning.table(unlearning.analyze(make_run(steps=STEPS, accuracy=_accuracy())))
    assert "zeroed" not in free.replace("no zeroing", "") and "lag" not in free
    assert "onset step" in free and "no sign constraint" in free


@pytest.mark.parametrize("n_layers", [2, 9])
def test_figures_are_titled_labelled_and_draw_cleanly(n_layers):
    layers = [f"fc{j + 1}" for j in range(n_layers)]
    zeroed = np.column_stack([_logistic(150.0 + 10 * j) for j in range(n_layers)])
    tree = make_run(
        steps=STEPS,
        layers=layers,
        accuracy=_accuracy(),
        zeroed=zeroed,
        attempted_flips=100 * zeroed,
        config={"constraint.sign": "neuron"},
    )
    result = unlearning.analyze(tree)
    check_figure(unlearning.plot_unlearning(result), units=("(fraction)", "step"))
    zeroing = unlearning.plot_zeroing(result)
    check_figure(zeroing, units=("(fraction)", "(count per step)"))
    legend = [t.get_text() for t in zeroing.legends[0].get_texts()]
    assert legend[:n_layers] == layers and "mean over layers" in legend


def test_plot_docstrings_read_as_captions():
    check_captions(unlearning)


def test_fall_in_the_last_points_only_is_too_brief_to_call():
    """A noisy curve whose last two points dip below the margin is not unlearning; the same
    fall lasting longer is."""
    acc = rise_then_fall(STEPS, 0.9, 100, STEPS, SLOPE)  # holds 0.9 to the end
    brief = acc.copy()
    brief[-2:] = 0.7
    result = unlearning.analyze(make_run(steps=STEPS, accuracy=brief), window=1)
    assert not bool(result["unlearning"])
    assert "too briefly" in result.attrs["verdict"]
    lasting = acc.copy()
    lasting[-unlearning.MIN_FALL :] = 0.7
    assert bool(unlearning.analyze(make_run(steps=STEPS, accuracy=lasting), window=1)["unlearning"])
