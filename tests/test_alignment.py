"""dynalign.analyses.alignment on synthetic runs with planted angle trajectories."""

from __future__ import annotations

import inspect
import json
import warnings

import numpy as np
import pytest
import xarray as xr
import zarr
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from synthetic_stores import exp_decay, make_run, read_run, write_run

from dynalign.analyses import alignment, figures
from dynalign.analyses.smoothing import AnalysisError, smooth

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


# ------------------------------------------------------------------------------ figure checks
# Shared by the tests of every analysis's figures (imported from here, as helpers are elsewhere).


def draw_warnings(fig: Figure) -> list[str]:
    """The warnings drawing ``fig`` on the Agg canvas raises (constrained layout collapsing,
    missing glyphs, ...)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        FigureCanvasAgg(fig)
        fig.canvas.draw()
    return [f"{w.category.__name__}: {w.message}" for w in caught]


def check_figure(fig: Figure, units: tuple[str, ...] = ()) -> None:
    """A figure a reader of the report can read on its own: a title, every visible plot axes
    labelled on x and y, each unit in ``units`` in some axis label, no legend inside the axes
    (legends sit outside, so they do not squeeze the plots) and drawn without a warning."""
    assert isinstance(fig, Figure)
    titles = [fig.get_suptitle(), *(ax.get_title() for ax in fig.axes)]
    assert any(t.strip() for t in titles), "the figure has no title"
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert visible
    labels = []
    for ax in visible:
        assert ax.get_xlabel().strip() and ax.get_ylabel().strip(), ax.get_title()
        assert ax.get_legend() is None, f"a legend inside {ax.get_title()!r}"
        labels += [ax.get_xlabel(), ax.get_ylabel()]
    for unit in units:
        assert any(unit in label for label in labels), (unit, labels)
    assert draw_warnings(fig) == []


def check_captions(module) -> None:
    """Every plot function's docstring opens with one line that reads as a caption sentence."""
    plots = [
        fn
        for name, fn in vars(module).items()
        if name.startswith("plot_") and inspect.isfunction(fn) and fn.__module__ == module.__name__
    ]
    assert plots
    for fn in plots:
        first = (fn.__doc__ or "").strip().splitlines()[0]
        assert first[:1].isupper() and first.endswith("."), (fn.__name__, first)
        assert len(first.split()) >= 6 and "``" not in first, (fn.__name__, first)


def _planted(steps: int, n_layers: int, **kwargs) -> xr.DataTree:
    """A run whose hidden layers align (update, delta, feedback 90 -> 60 degrees) and whose
    read-out, the last layer, is exact as under FA."""
    decay = exp_decay(steps, 90.0, 60.0, steps / 5)
    hidden = np.column_stack([decay + j for j in range(n_layers - 1)] + [np.zeros(steps)])
    feedback = np.column_stack([decay + j for j in range(n_layers)])
    return make_run(
        steps=steps,
        layers=[f"fc{j + 1}" for j in range(n_layers)],
        update_angle=hidden,
        delta_angle=hidden,
        feedback_angle=feedback,
        **kwargs,
    )


def test_plot_angles_has_one_panel_per_kind_and_two_lines_per_drawn_layer():
    result = alignment.analyze(_planted(30, 3))
    fig = alignment.plot_angles(result)
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 3
    lines = [len(ax.get_lines()) for ax in fig.axes]
    # raw + smoothed per layer, threshold; the exact read-out fc3 only in the feedback panel
    assert lines == [2 * 2 + 1, 2 * 2 + 1, 2 * 3 + 1]
    assert "fc3: exact (0°)" in fig.axes[0].get_title()
    assert len(alignment.plot_angles(result, kinds=["update"]).axes) == 1
    with pytest.raises(AnalysisError, match="kind"):
        alignment.plot_angles(result, kinds=["sideways"])


def test_angle_plot_is_none_for_bp_and_a_figure_for_fa():
    bp = alignment.analyze(_planted(30, 3, config={"rule.name": "bp"}))
    assert bp.attrs["rule"] == "bp"
    assert alignment.plot_angles(bp) is None
    assert figures(alignment, bp) == []
    fa = alignment.analyze(_planted(30, 3, config={"rule.name": "fa"}))
    assert fa.attrs["rule"] == "fa"
    assert isinstance(alignment.plot_angles(fa), Figure)
    assert [name for name, _ in figures(alignment, fa)] == ["plot_angles"]


def test_a_result_without_the_rule_attr_reads_the_rule_from_its_config():
    bp = alignment.analyze(make_run(steps=10, config={"rule.name": "bp"}))
    del bp.attrs["rule"]
    assert alignment.result_rule(bp) == "bp" and alignment.plot_angles(bp) is None


def test_kinds_with_no_informative_layer_get_no_panel():
    # every angle 0 (exact) or missing: nothing to draw, even for an FA run
    assert alignment.plot_angles(alignment.analyze(make_run(steps=20))) is None
    nan = np.full((20, 2), np.nan)
    tree = make_run(
        steps=20,
        layers=["fc1", "fc2"],
        update_angle=np.column_stack([np.linspace(90, 50, 20), np.zeros(20)]),
        feedback_angle=np.column_stack([nan[:, 0], np.full(20, 85.0)]),  # as under DFA
    )
    fig = alignment.plot_angles(alignment.analyze(tree))
    titles = [ax.get_title() for ax in fig.axes]
    assert len(titles) == 2 and titles[0].startswith("Update") and "fc2: exact" in titles[0]
    assert titles[1].startswith("Feedback") and "fc1: no angle" in titles[1]


def test_bp_table_says_the_angles_are_exact_in_one_line_and_keeps_the_numbers():
    result = alignment.analyze(make_run(steps=40, config={"rule.name": "bp"}, probe_every=4))
    lines = alignment.table(result).splitlines()
    assert len(lines) == 2
    assert "exact by construction" in lines[1] and "0° up to rounding" in lines[1]
    assert (result["plateau_angle"] == 0).all()  # the numbers stay in the result
    fa = alignment.table(alignment.analyze(_planted(40, 2)))
    assert "exact by construction" not in fa and "plateau" in fa


@pytest.mark.parametrize("n_layers", [3, 9])
def test_angle_figure_is_titled_labelled_and_draws_cleanly(n_layers):
    # 9 layers: an 8-hidden-layer MLP, the most a report usually shows in one figure
    fig = alignment.plot_angles(alignment.analyze(_planted(200, n_layers)))
    check_figure(fig, units=("°", "step"))
    assert fig.get_suptitle().startswith("Alignment with backprop")
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == [f"fc{j + 1}" for j in range(n_layers)] + ["threshold 80°"]


def test_check_figure_fails_on_a_figure_a_reader_cannot_read():
    fig = Figure(figsize=(2.0, 1.5), layout="constrained")
    ax = fig.add_subplot()
    (line,) = ax.plot([0, 1], [0, 1], label="a")
    with pytest.raises(AssertionError):
        check_figure(fig)  # no title
    ax.set_title("t")
    with pytest.raises(AssertionError):
        check_figure(fig)  # no labels
    ax.set_xlabel("step")
    ax.set_ylabel("angle (°)")
    with pytest.raises(AssertionError):
        check_figure(fig, units=("%",))  # a unit no label has
    ax.legend()
    with pytest.raises(AssertionError):
        check_figure(fig)  # a legend inside the axes
    ax.get_legend().remove()
    check_figure(fig, units=("°",))
    # a legend too long for the figure squeezes the axes to nothing: a warning, so a failure
    labels = [f"a long legend entry {j}" for j in range(12)]
    fig.legend([line] * 12, labels, loc="outside right upper")
    assert any("constrained_layout not applied" in w for w in draw_warnings(fig))
    with pytest.raises(AssertionError):
        check_figure(fig)


def test_plot_docstrings_read_as_captions():
    check_captions(alignment)
