"""dynalign.analyses.alignment on synthetic runs with planted angle trajectories."""

from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr
import zarr
from dynalign.analyses import alignment
from dynalign.analyses.smoothing import AnalysisError, smooth
from matplotlib.figure import Figure
from synthetic_stores import exp_decay, make_run, read_run, write_run

STEPS = 600
TAU = 100.0
# 90 -> 60 degrees with time constant TAU crosses 80 where 60 + 30 exp(-(s-1)/TAU) = 80.
TRUE_CROSSING = 1 + TAU * np.log(30 / 20)


def _angles(seed: int, noise: float = 1.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return exp_decay(STEPS, 90.0, 60.0, TAU) + rng.normal(0.0, noise, STEPS)


# ------------------------------------------------------------------------------ smoothing


def test_smooth_is_a_centred_mean_over_probed_points_only():
    rng = np.random.default_rng(0)
    values = rng.normal(size=23)
    values[::3] = np.nan  # un-probed steps
    window = 4
    got = smooth(values, window)
    finite = np.flatnonzero(np.isfinite(values))
    expected = np.full(values.shape, np.nan)
    for pos, i in enumerate(finite):  # independent loop: the window counts probed points
        lo, hi = max(pos - 2, 0), min(pos + 3, finite.size)  # window 4 is widened to 5
        expected[i] = values[finite[lo:hi]].mean()
    np.testing.assert_allclose(got, expected, equal_nan=True, rtol=1e-12)


def test_smooth_treats_columns_and_dataarray_slices_separately():
    rng = np.random.default_rng(1)
    values = rng.normal(size=(17, 3))
    values[::4, 1] = np.nan
    columns = np.column_stack([smooth(values[:, j], 3) for j in range(3)])
    np.testing.assert_allclose(smooth(values, 3), columns, equal_nan=True)
    da = xr.DataArray(values.T, dims=("layer", "step"))
    np.testing.assert_allclose(smooth(da, 3, dim="step").values, columns.T, equal_nan=True)


def test_smooth_rejects_a_bad_window():
    with pytest.raises(AnalysisError, match="window"):
        smooth(np.ones(5), 0)


# ------------------------------------------------------------------------------ crossing


def test_noiseless_crossing_is_the_first_probed_step_below_the_threshold():
    tree = make_run(steps=STEPS, layers=["fc1"], update_angle=_angles(0, noise=0.0), probe_every=5)
    result = alignment.analyze(tree, window=1)
    expected = 1 + 5 * np.ceil((TRUE_CROSSING - 1) / 5)  # probes at steps 1, 6, 11, ...
    assert float(result["crossing_step"].sel(kind="update", layer="fc1")) == expected


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_planted_decay_gives_back_its_crossing_step(seed):
    # Tolerance: 15 steps = 3 probe intervals; the 5-point smoothing window spans 25 steps
    # and 1 degree of noise moves the crossing of a 0.2 degree/step slope by a few steps.
    other = exp_decay(STEPS, 90.0, 60.0, 2 * TAU)  # second layer decays twice as slowly
    angles = np.column_stack([_angles(seed), other, np.zeros(STEPS)])
    tree = make_run(steps=STEPS, layers=["fc1", "fc2", "fc3"], update_angle=angles, probe_every=5)
    result = alignment.analyze(tree, window=5, threshold=80.0)
    crossing = result["crossing_step"].sel(kind="update")
    assert abs(float(crossing.sel(layer="fc1")) - TRUE_CROSSING) <= 15
    assert abs(float(crossing.sel(layer="fc2")) - (1 + 2 * TAU * np.log(1.5))) <= 15
    assert float(crossing.sel(layer="fc3")) == 1  # an exact (output) layer is aligned at once


def test_rebound_above_the_threshold_gets_the_later_step():
    angles = np.full(STEPS, 60.0)
    angles[:50] = 90.0
    angles[299:340] = 85.0  # steps 300..340 back above 80
    tree = make_run(steps=STEPS, layers=["fc1"], update_angle=angles)
    window = 5
    result = alignment.analyze(tree, window=window)
    crossing = float(result["crossing_step"].sel(kind="update", layer="fc1"))
    assert abs(crossing - 341) <= window  # not the first crossing near step 51
    exact = alignment.analyze(tree, window=1)["crossing_step"].sel(kind="update", layer="fc1")
    assert float(exact) == 341


def test_never_crossing_gives_nan_and_the_table_says_so():
    rng = np.random.default_rng(3)
    angles = 85.0 + rng.normal(0, 1.0, STEPS)
    angles[100:110] = 70.0  # a brief dip below does not count: it does not stay there
    tree = make_run(steps=STEPS, layers=["fc1"], update_angle=angles, probe_every=2)
    result = alignment.analyze(tree, window=3)
    assert np.isnan(result["crossing_step"].sel(kind="update", layer="fc1"))
    text = alignment.table(result)
    assert "never" in text and "update/fc1" in text


# ------------------------------------------------------------------------------ summaries


def test_initial_minimum_and_plateau_match_closed_forms():
    step = np.arange(1, STEPS + 1)
    v_shape = 30 + 0.1 * np.abs(step - 200.0)  # minimum 30 at step 200
    plateau_curve = np.where(step > 300, 60.0, 90.0 - 0.1 * step)  # exactly 60 in the last half
    tree = make_run(
        steps=STEPS,
        layers=["fc1", "fc2"],
        update_angle=np.column_stack([v_shape, plateau_curve]),
    )
    result = alignment.analyze(tree, window=5, initial_points=3, plateau_fraction=0.4)
    update = result.sel(kind="update")
    # initial: mean of the first 3 values; smoothed minimum of the V: 30 + 0.1 * mean(2,1,0,1,2)
    assert float(update["initial_angle"].sel(layer="fc1")) == pytest.approx(30 + 0.1 * 198)
    assert float(update["min_angle"].sel(layer="fc1")) == pytest.approx(30 + 0.1 * 6 / 5)
    assert float(update["min_step"].sel(layer="fc1")) == 200
    assert float(update["plateau_angle"].sel(layer="fc2")) == pytest.approx(60.0)
    assert float(update["initial_angle"].sel(layer="fc2")) == pytest.approx(90 - 0.1 * 2)


def test_bp_run_is_aligned_from_the_first_step():
    tree = make_run(steps=40, config={"rule.name": "bp"}, probe_every=4)  # all angles 0
    result = alignment.analyze(tree)
    assert (result["crossing_step"] == 1).all()
    assert (result["plateau_angle"] == 0).all()
    assert (result["n_probed"] == 10).all()


def test_only_probed_steps_are_kept_and_smoothing_skips_gaps():
    tree = make_run(steps=30, layers=["fc1"], update_angle=np.arange(30.0), probe_every=3)
    result = alignment.analyze(tree, window=3)
    np.testing.assert_array_equal(result["step"], np.arange(1, 31, 3))
    sm = result["angle_smooth"].sel(kind="update", layer="fc1").values
    raw = np.arange(30.0)[::3]
    np.testing.assert_allclose(sm[1:-1], raw[1:-1])  # a line is its own centred average
    assert sm[0] == pytest.approx(raw[:2].mean())


def test_feedback_alignment_is_the_feedback_angle_series():
    feedback = exp_decay(50, 90, 45, 10)
    result = alignment.analyze(make_run(steps=50, layers=["fc1"], feedback_angle=feedback))
    np.testing.assert_allclose(alignment.feedback_alignment(result).squeeze(), feedback, rtol=1e-6)


# ------------------------------------------------------------------------------ store layout


def test_round_trip_through_zarr_gives_the_same_result(tmp_path):
    angles = np.column_stack([_angles(5), np.zeros(STEPS)])
    tree = make_run(steps=STEPS, layers=["fc1", "rnn.H"], update_angle=angles, probe_every=5)
    path = write_run(tree, tmp_path / "fa_s5.zarr")

    group = zarr.open_group(path, mode="r")
    assert group.metadata.zarr_format == 3
    assert group["steps/update_angle"].metadata.dimension_names == ("step", "layer")
    assert group["epochs/val_accuracy"].metadata.dimension_names == ("epoch",)

    again = read_run(path)
    assert again["steps"]["update_angle"].attrs["units"] == "degree"
    assert json.loads(again.attrs["config"])["rule"]["name"] == "fa"
    on_disk = alignment.analyze(again)
    in_memory = alignment.analyze(tree)
    xr.testing.assert_allclose(on_disk.drop_attrs(), in_memory.drop_attrs())
    assert on_disk.attrs["source"].endswith("fa_s5.zarr")
    assert on_disk.attrs["run"] == "fa_s5"
    assert list(on_disk["layer"].values) == ["fc1", "rnn.H"]

    out = tmp_path / "alignment.zarr"  # results store like runs do (analysis/<name> groups)
    on_disk.to_zarr(out, zarr_format=3, consolidated=False)
    xr.testing.assert_identical(xr.open_zarr(out, consolidated=False).load(), on_disk)


def test_result_carries_units_and_provenance():
    result = alignment.analyze(make_run(steps=20), window=3, threshold=70)
    for name, var in result.variables.items():
        if name not in ("kind", "layer"):
            assert "units" in var.attrs and "long_name" in var.attrs, name
    assert result["angle"].attrs["units"] == "degree"
    assert json.loads(result.attrs["parameters"])["threshold"] == 70
    assert result.attrs["status"] == "completed"
    assert json.loads(result.attrs["config"])["model"]["kind"] == "mlp"


# ------------------------------------------------------------------------------ interface


def test_applies_only_to_runs_with_an_update_angle():
    assert alignment.applies(make_run(steps=5))
    assert not alignment.applies(xr.DataTree())
    with pytest.raises(AnalysisError, match="update_angle"):
        alignment.analyze(xr.DataTree())


def test_run_without_probed_steps_gives_an_empty_result_and_says_so():
    result = alignment.analyze(make_run(steps=5, probe_every=0))
    assert result.sizes["step"] == 0 and (result["n_probed"] == 0).all()
    assert np.isnan(result["crossing_step"]).all()
    assert "no probed steps" in alignment.table(result)


@pytest.mark.parametrize(
    "params",
    [{"threshold": 0}, {"threshold": 200}, {"plateau_fraction": 0}, {"initial_points": 0}],
)
def test_bad_parameters_raise_clear_errors(params):
    with pytest.raises(AnalysisError, match=next(iter(params))):
        alignment.analyze(make_run(steps=10), **params)


def test_plot_angles_has_one_panel_per_kind_and_two_lines_per_layer():
    tree = make_run(steps=30, layers=["fc1", "fc2"], update_angle=np.linspace(90, 10, 30))
    result = alignment.analyze(tree)
    fig = alignment.plot_angles(result)
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 3
    for ax in fig.axes:
        assert len(ax.get_lines()) == 2 * 2 + 1  # raw + smoothed per layer, threshold line
    assert len(alignment.plot_angles(result, kinds=["update"]).axes) == 1
    with pytest.raises(AnalysisError, match="kind"):
        alignment.plot_angles(result, kinds=["sideways"])
