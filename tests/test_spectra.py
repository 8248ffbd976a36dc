"""dynalign.analyses.spectra on synthetic runs whose weight spectra, and so answers, are planted."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import xarray as xr
from click.testing import CliRunner
from matplotlib.figure import Figure
from synthetic_stores import make_run, write_run
from test_alignment import check_captions, check_figure

from dynalign.analyses import ANALYSES, applicable, figures, spectra, summary
from dynalign.analyses.smoothing import AnalysisError
from dynalign.reader import open_run

# float32 storage rounds every weight by ~6e-8 relative, so planted values come back to ~1e-6
RTOL = 1e-5


def _orthogonal(n: int, rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(n, n)))
    return q * np.sign(np.diag(r))


def planted(s, rows: int, cols: int, seed: int = 0) -> np.ndarray:
    """U diag(s) V^T with random orthogonal U (rows) and V (cols): singular values ``s``."""
    rng = np.random.default_rng(seed)
    s = np.asarray(s, dtype=float)
    u, v = _orthogonal(rows, rng)[:, : s.size], _orthogonal(cols, rng)[:, : s.size]
    return (u * s) @ v.T


def entropy_of(s) -> float:
    """The closed form, written out independently of the module."""
    p = np.asarray(s, dtype=float) / np.sum(s)
    p = p[p > 0]
    return float(-(p * np.log(p)).sum() / np.log(len(s)))


def run_with(snapshots: dict, **kwargs) -> xr.DataTree:
    """A synthetic run whose layers are exactly the snapshotted ones."""
    return make_run(steps=40, layers=list(snapshots), snapshots=snapshots, **kwargs)


def snap(weights, feedback=None, steps=None) -> dict:
    weights = np.asarray(weights)
    steps = np.arange(weights.shape[0]) * 10 if steps is None else steps
    out = {"weight": weights, "snapshot_step": steps}
    if feedback is not None:
        out["feedback"] = np.asarray(feedback)
    return out


# ------------------------------------------------------------------------------ linear algebra


def test_singular_values_match_an_exact_svd_including_conv_and_wide_shapes():
    rng = np.random.default_rng(1)
    for shape in [(7, 7), (5, 40), (40, 5), (6, 3, 3, 3)]:
        w = rng.normal(size=shape)
        matrix = spectra.as_matrix(w)
        assert matrix.shape == (shape[0], int(np.prod(shape[1:])))
        exact = np.linalg.svd(w.reshape(shape[0], -1), compute_uv=False)
        np.testing.assert_allclose(spectra.singular_values(matrix), exact, rtol=1e-10)


def test_entropy_closed_forms():
    assert spectra.svd_entropy(np.ones(9)) == pytest.approx(1.0)
    assert spectra.svd_entropy([3.0, 0, 0, 0]) == 0.0
    # r equal values among n: H = ln r / ln n, effective rank r
    h = spectra.svd_entropy([2.0, 2.0, 2.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    assert h == pytest.approx(math.log(3) / math.log(8))
    assert spectra.effective_rank(h, 8) == pytest.approx(3.0)
    assert math.isnan(spectra.svd_entropy([1.0]))  # one value: no normalisation
    assert math.isnan(spectra.svd_entropy(np.zeros(4)))  # a zero matrix has no spectrum shape
    assert math.isnan(spectra.svd_entropy([1.0, np.nan]))


def test_non_finite_weights_give_nan_not_an_error():
    w = np.ones((4, 4))
    w[1, 2] = np.inf
    assert np.isnan(spectra.singular_values(w)).all()
    assert math.isnan(spectra.spectral_radius(w))
    assert math.isnan(spectra.spectral_radius(np.ones((3, 4))))  # not square


# ------------------------------------------------------------------------------ planted spectra


S_PLANTED = np.array([5.0, 4.0, 3.0, 2.0, 1.0, 0.5, 0.25, 0.1])


def test_planted_singular_values_and_closed_form_entropy():
    # three snapshots with spectra s, s^2, s^3 (so the entropy falls as the spectrum sharpens)
    spectra_t = [S_PLANTED**k for k in (1, 2, 3)]
    w = np.stack([planted(s, 8, 12, seed=k) for k, s in enumerate(spectra_t)])
    result = spectra.analyze(run_with({"fc1": snap(w)}), top=5)

    assert result.sizes["index"] == 5
    sv = result["singular_value"].sel(matrix="W", layer="fc1").values
    for t, s in enumerate(spectra_t):
        np.testing.assert_allclose(sv[t], s[:5], rtol=RTOL)
    # the entropy uses all 8 values, not only the 5 kept
    expected = [entropy_of(s) for s in spectra_t]
    h = result["svd_entropy"].sel(matrix="W", layer="fc1").values
    np.testing.assert_allclose(h, expected, rtol=RTOL)
    np.testing.assert_allclose(
        result["effective_rank"].sel(matrix="W", layer="fc1").values,
        np.exp(np.array(expected) * np.log(8)),
        rtol=RTOL,
    )
    r = result.sel(matrix="W", layer="fc1")
    assert float(r["entropy_initial"]) == pytest.approx(expected[0], rel=RTOL)
    assert float(r["entropy_final"]) == pytest.approx(expected[-1], rel=RTOL)
    assert float(r["sigma_max_final"]) == pytest.approx(5.0**3, rel=RTOL)
    assert (int(r["rows"]), int(r["cols"]), int(r["n_singular"])) == (8, 12, 8)
    np.testing.assert_array_equal(result["snapshot_step"], [0, 10, 20])


def test_rank_one_gives_entropy_zero_and_scaled_orthogonal_gives_one():
    rng = np.random.default_rng(2)
    rank_one = np.outer(rng.normal(size=10), rng.normal(size=16))
    orthogonal = 2.5 * _orthogonal(12, rng)
    wide = 0.7 * _orthogonal(30, rng)[:6]  # orthonormal rows: six equal singular values
    tree = run_with(
        {"fc1": snap(rank_one[None]), "fc2": snap(orthogonal[None]), "fc3": snap(wide[None])}
    )
    result = spectra.analyze(tree)
    h = result["svd_entropy"].sel(matrix="W", snapshot=0)
    assert float(h.sel(layer="fc1")) == pytest.approx(0.0, abs=1e-9)
    assert float(h.sel(layer="fc2")) == pytest.approx(1.0, abs=1e-9)
    assert float(h.sel(layer="fc3")) == pytest.approx(1.0, abs=1e-9)
    rank = result["effective_rank"].sel(matrix="W", snapshot=0)
    np.testing.assert_allclose(rank.values, [1.0, 12.0, 6.0], rtol=1e-8)
    sv = result["singular_value"].sel(matrix="W", snapshot=0)
    np.testing.assert_allclose(sv.sel(layer="fc2").values[:12], 2.5, rtol=RTOL)
    assert (sv.sel(layer="fc1").values[1:10] == 0).all()  # below the rank tolerance: exactly 0


def test_recurrent_matrix_gives_its_spectral_radius_not_its_largest_singular_value():
    rng = np.random.default_rng(3)
    n = 10

    def with_eigenvalues(radius: float) -> np.ndarray:
        # a rotation-scaling block (eigenvalues radius * e^{+-0.7i}) and smaller real ones,
        # in a non-orthogonal basis, so the largest singular value exceeds the radius
        d = np.diag(np.r_[0.0, 0.0, np.linspace(-0.5, 0.6, n - 2)] * radius)
        c, s = math.cos(0.7), math.sin(0.7)
        d[:2, :2] = radius * np.array([[c, -s], [s, c]])
        basis = np.eye(n) + 0.4 * rng.normal(size=(n, n)) / math.sqrt(n)
        return basis @ d @ np.linalg.inv(basis)

    radii = [0.9, 1.1, 1.3]
    hidden = np.stack([with_eigenvalues(r) for r in radii])
    tree = run_with(
        {
            "rnn.W_x": snap(rng.normal(size=(3, n, 4))),
            "rnn.H": snap(hidden, feedback=rng.normal(size=(3, n, n))),
        }
    )
    result = spectra.analyze(tree)
    rho = result["spectral_radius"]
    np.testing.assert_allclose(rho.sel(layer="rnn.H").values, radii, rtol=1e-5)
    assert np.isnan(rho.sel(layer="rnn.W_x")).all()  # not recurrent: not tracked
    sigma = result["singular_value"].sel(matrix="W", layer="rnn.H", index=1).values
    assert (sigma > np.array(radii) * 1.05).all()  # non-normal: sigma_1 is not the radius
    assert float(result["spectral_radius_initial"].sel(layer="rnn.H")) == pytest.approx(0.9)
    assert float(result["spectral_radius_final"].sel(layer="rnn.H")) == pytest.approx(1.3)
    assert "spectral radius of rnn.H" in spectra.table(result)


def test_bp_run_has_w_values_only_and_nan_for_b():
    rng = np.random.default_rng(4)
    tree = run_with(
        {"fc1": snap(rng.normal(size=(2, 6, 9))), "fc2": snap(rng.normal(size=(2, 3, 6)))},
        config={"rule.name": "bp"},
    )
    result = spectra.analyze(tree)
    assert np.isfinite(result["svd_entropy"].sel(matrix="W")).all()
    for name in ("singular_value", "svd_entropy", "effective_rank", "entropy_final", "rows"):
        assert np.isnan(result[name].sel(matrix="B")).all(), name
    text = spectra.table(result)
    assert "no feedback matrices B stored" in text
    assert not any(line.split()[1:2] == ["B"] for line in text.splitlines())
    values = summary(result)["values"]  # JSON-ready: NaN becomes None
    assert values["entropy_final"]["B"] == {"fc1": None, "fc2": None}
    assert 0 < values["entropy_final"]["W"]["fc1"] < 1


def test_layers_of_different_sizes_are_nan_padded():
    rng = np.random.default_rng(5)
    tree = run_with(
        {
            "fc1": snap(rng.normal(size=(2, 20, 30))),
            "fc2": snap(rng.normal(size=(2, 12, 20))),
            "fc3": snap(rng.normal(size=(2, 3, 12))),
        }
    )
    result = spectra.analyze(tree, top=32)
    assert result.sizes["index"] == 20  # never wider than the widest spectrum
    sv = result["singular_value"].sel(matrix="W", snapshot=1)
    assert np.isfinite(sv.sel(layer="fc1")).all()
    assert np.isfinite(sv.sel(layer="fc3").values[:3]).all()
    assert np.isnan(sv.sel(layer="fc3").values[3:]).all()
    np.testing.assert_array_equal(result["n_singular"].sel(matrix="W"), [20, 12, 3])
    assert spectra.analyze(tree, top=None).sizes["index"] == 20
    assert spectra.analyze(tree, top=4).sizes["index"] == 4


def test_conv_weights_are_read_as_out_by_in_kh_kw():
    s = np.array([3.0, 2.0, 1.0, 0.5, 0.5, 0.1])
    conv = planted(s, 6, 2 * 3 * 3, seed=6).reshape(6, 2, 3, 3)
    tree = run_with({"conv1": snap(np.stack([conv, 2 * conv]), feedback=np.stack([conv, conv]))})
    result = spectra.analyze(tree)
    r = result.sel(layer="conv1")
    assert (int(r["rows"].sel(matrix="W")), int(r["cols"].sel(matrix="W"))) == (6, 18)
    np.testing.assert_allclose(
        r["singular_value"].sel(matrix="W").values[:, :6], [s, 2 * s], rtol=RTOL
    )
    # scaling W leaves its entropy alone; B (= the initial W) keeps its spectrum
    np.testing.assert_allclose(r["svd_entropy"].sel(matrix="W"), entropy_of(s), rtol=RTOL)
    np.testing.assert_allclose(r["singular_value"].sel(matrix="B").values[:, :6], [s, s], rtol=RTOL)


def test_feedback_of_another_shape_than_the_weight_gets_its_own_spectrum():
    # direct feedback alignment: B maps the output error (3 classes) to the layer, (3, in)
    rng = np.random.default_rng(7)
    s_b = np.array([2.0, 1.0, 0.5])
    tree = run_with(
        {"fc1": snap(rng.normal(size=(2, 10, 20))), "fc2": snap(rng.normal(size=(2, 3, 10)))}
    )
    dfa = xr.Dataset(
        {
            "snapshot_step": ("snapshot", [0, 10]),
            "weight": (("snapshot", "out", "in"), rng.normal(size=(2, 10, 20))),
            "feedback": (
                ("snapshot", "class", "in"),
                np.stack([planted(s_b, 3, 20, seed=8)] * 2),
            ),
        }
    )
    tree["snapshots/fc1"] = xr.DataTree(dfa)
    result = spectra.analyze(tree)
    b = result.sel(matrix="B", layer="fc1")
    assert (int(b["rows"]), int(b["cols"]), int(b["n_singular"])) == (3, 20, 3)
    np.testing.assert_allclose(b["singular_value"].values[:, :3], [s_b, s_b], rtol=1e-10)
    assert np.isnan(b["singular_value"].values[:, 3:]).all()
    assert float(b["entropy_final"]) == pytest.approx(entropy_of(s_b))
    assert "3×20" in spectra.table(result)


def test_layers_snapshotted_at_different_steps_share_one_step_axis():
    rng = np.random.default_rng(9)
    tree = run_with(
        {
            "fc1": snap(rng.normal(size=(3, 4, 5)), steps=[0, 10, 20]),
            "fc2": snap(rng.normal(size=(2, 3, 4)), steps=[0, 20]),
        }
    )
    result = spectra.analyze(tree)
    np.testing.assert_array_equal(result["snapshot_step"], [0, 10, 20])
    h = result["svd_entropy"].sel(matrix="W", layer="fc2").values
    assert np.isfinite(h[[0, 2]]).all() and np.isnan(h[1])


def test_a_diverged_last_snapshot_is_nan_and_the_final_value_is_the_last_finite_one():
    w = np.stack([planted(S_PLANTED, 8, 8, seed=k) for k in range(3)])
    w[2, 0, 0] = np.nan
    result = spectra.analyze(run_with({"fc1": snap(w)}))
    r = result.sel(matrix="W", layer="fc1")
    assert np.isnan(r["svd_entropy"].values[2]) and np.isnan(r["singular_value"].values[2]).all()
    assert float(r["entropy_final"]) == pytest.approx(entropy_of(S_PLANTED), rel=RTOL)


# ------------------------------------------------------------------------------ interface


def test_applies_only_to_runs_with_a_snapshot():
    assert not spectra.applies(make_run(steps=5))
    assert not spectra.applies(xr.DataTree())
    empty = run_with({"fc1": snap(np.zeros((0, 3, 4)), steps=np.zeros(0, dtype=np.int64))})
    assert not spectra.applies(empty)
    for tree in (make_run(steps=5), empty):
        with pytest.raises(AnalysisError, match="snapshot_every"):
            spectra.analyze(tree)
    assert spectra.applies(run_with({"fc1": snap(np.ones((1, 3, 4)))}))


def test_is_registered_and_chosen_for_runs_with_snapshots():
    assert ANALYSES["spectra"] is spectra
    tree = run_with({"fc1": snap(np.ones((1, 3, 4)))})
    assert spectra in applicable(tree)
    assert spectra not in applicable(make_run(steps=5))


@pytest.mark.parametrize("top", [0, -3, 2.5, True, "5"])
def test_bad_top_raises_a_clear_error(top):
    with pytest.raises(AnalysisError, match="top"):
        spectra.analyze(run_with({"fc1": snap(np.ones((1, 3, 4)))}), top=top)


def test_round_trip_through_zarr_with_a_dotted_layer_name(tmp_path):
    rng = np.random.default_rng(10)
    tree = run_with(
        {
            "rnn.W_x": snap(rng.normal(size=(3, 6, 5)), feedback=rng.normal(size=(3, 6, 5))),
            "rnn.H": snap(rng.normal(size=(3, 6, 6)), feedback=rng.normal(size=(3, 6, 6))),
        }
    )
    path = write_run(tree, tmp_path / "rnn_s0.zarr")
    again = open_run(path)
    on_disk = spectra.analyze(again)
    xr.testing.assert_allclose(on_disk.drop_attrs(), spectra.analyze(tree).drop_attrs())
    assert list(on_disk["layer"].values) == ["rnn.W_x", "rnn.H"]
    assert on_disk.attrs["run"] == "rnn_s0" and on_disk.attrs["analysis"] == "spectra"
    assert json.loads(on_disk.attrs["parameters"]) == {"top": 32}


def test_result_carries_units_and_long_names():
    result = spectra.analyze(run_with({"fc1": snap(np.ones((2, 3, 4)))}))
    for name, var in result.variables.items():
        if name not in ("matrix", "layer"):
            assert "units" in var.attrs and "long_name" in var.attrs, name


def test_table_lists_every_layer_and_matrix():
    rng = np.random.default_rng(11)
    tree = run_with(
        {
            "fc1": snap(rng.normal(size=(2, 8, 12)), feedback=rng.normal(size=(2, 8, 12))),
            "fc2": snap(rng.normal(size=(2, 4, 8)), feedback=rng.normal(size=(2, 4, 8))),
        },
        name="fa_s0",
    )
    text = spectra.table(spectra.analyze(tree))
    lines = text.splitlines()
    assert lines[0] == "spectra — fa_s0 (completed)"
    assert "entropy" in text and "2 snapshots: first at step 0, last at step 10" in text
    rows = [line.split()[:3] for line in lines if line.startswith("fc")]
    assert rows == [
        ["fc1", "W", "8×12"],
        ["fc1", "B", "8×12"],
        ["fc2", "W", "4×8"],
        ["fc2", "B", "4×8"],
    ]


def test_figures_have_titles_axis_labels_and_the_right_panels():
    rng = np.random.default_rng(12)
    mlp = spectra.analyze(
        run_with(
            {
                "fc1": snap(rng.normal(size=(3, 8, 12)), feedback=rng.normal(size=(3, 8, 12))),
                "fc2": snap(rng.normal(size=(3, 4, 8)), feedback=rng.normal(size=(3, 4, 8))),
            }
        )
    )
    assert [name for name, _ in figures(spectra, mlp)] == ["plot_spectra", "plot_entropy"]
    assert spectra.plot_spectral_radius(mlp) is None  # no recurrent layer

    fig = spectra.plot_spectra(mlp)
    assert isinstance(fig, Figure) and fig.get_suptitle()
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert len(panels) == 2
    for ax in panels:
        assert ax.get_yscale() == "log" and ax.get_xlabel() and ax.get_ylabel() and ax.get_title()
        assert len(ax.get_lines()) == 4  # W and B, first and last snapshot

    ax = spectra.plot_entropy(mlp).axes[0]
    assert ax.get_title() and ax.get_xlabel() == "step" and "entropy" in ax.get_ylabel()
    styles = {line.get_label(): line.get_linestyle() for line in ax.get_lines()}
    assert styles == {"fc1 W": "-", "fc1 B": "--", "fc2 W": "-", "fc2 B": "--"}

    rnn = spectra.analyze(run_with({"rnn.H": snap(rng.normal(size=(3, 5, 5)))}))
    fig = spectra.plot_spectral_radius(rnn)
    assert fig is not None and fig.axes[0].get_title() and "radius" in fig.axes[0].get_ylabel()
    check_figure(fig, units=("step",))
    assert len(figures(spectra, rnn)) == 3


@pytest.mark.parametrize("n_layers", [2, 9])
def test_figures_are_titled_labelled_and_draw_cleanly(n_layers):
    rng = np.random.default_rng(13)
    layers = {
        f"fc{j + 1}": snap(rng.normal(size=(3, 6, 6)), feedback=rng.normal(size=(3, 6, 6)))
        for j in range(n_layers)
    }
    result = spectra.analyze(run_with(layers))
    for _, fig in figures(spectra, result):
        check_figure(fig, units=("step",) if fig.axes[0].get_xlabel() == "step" else ())
    legend = [t.get_text() for t in spectra.plot_entropy(result).legends[0].get_texts()]
    assert legend == [*layers, "W", "B"]  # colour per layer, line style per matrix
    panels = [ax for ax in spectra.plot_spectra(result).axes if ax.get_visible()]
    assert len(panels) == n_layers


def test_a_bp_run_names_only_w_in_titles_and_legends():
    rng = np.random.default_rng(14)
    bp = spectra.analyze(run_with({"fc1": snap(rng.normal(size=(2, 4, 6)))}))
    fig = spectra.plot_spectra(bp)
    check_figure(fig)
    assert "W solid" in fig.get_suptitle() and "B" not in fig.get_suptitle()
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == ["first snapshot (step 0)", "last snapshot (step 10)", "W"]
    entropy = spectra.plot_entropy(bp)
    check_figure(entropy, units=("step",))
    assert "B" not in entropy.axes[0].get_title()


def test_plot_docstrings_read_as_captions():
    check_captions(spectra)


# ------------------------------------------------------------------------------ end to end


def test_recorded_fa_run_through_the_cli(tmp_path, tiny_config):
    from dynalign.cli.main import cli
    from dynalign.record import record

    path = tmp_path / "fa.zarr"
    record(tiny_config(**{"train.epochs": 1, "probes.snapshot_every": 2}), path, progress=False)
    res = CliRunner().invoke(cli, ["analyze", str(path), "--only", "spectra"])
    assert res.exit_code == 0, res.output
    assert "spectra — fa (completed)" in res.stdout and "entropy" in res.stdout
    rows = [line.split()[:2] for line in res.stdout.splitlines() if line.startswith("fc")]
    assert rows == [[layer, m] for layer in ("fc1", "fc2", "fc3") for m in ("W", "B")]

    # the numbers are those of an exact SVD of the stored snapshots
    tree = open_run(path)
    result = spectra.analyze(tree, top=None)
    weights = tree["snapshots/fc2"]["feedback"].values.astype(np.float64)
    exact = np.linalg.svd(weights, compute_uv=False)
    got = result["singular_value"].sel(matrix="B", layer="fc2").values
    np.testing.assert_allclose(got[:, : exact.shape[1]], exact, rtol=1e-8)
    np.testing.assert_allclose(
        result["svd_entropy"].sel(matrix="B", layer="fc2"),
        [entropy_of(s) for s in exact],
        rtol=1e-8,
    )
    as_json = CliRunner().invoke(cli, ["analyze", str(path), "--only", "spectra", "--json"])
    assert as_json.exit_code == 0, as_json.output
    values = json.loads(as_json.stdout)["runs"][0]["analyses"]["spectra"]["values"]
    assert set(values["entropy_initial"]["W"]) == {"fc1", "fc2", "fc3"}


def test_a_b_stored_once_is_decomposed_once(tmp_path, tiny_config, monkeypatch):
    """A fixed B (schema 4) is the same in every snapshot: one SVD per layer, not one per
    snapshot, with the values of every snapshot's."""
    from dynalign.record import record

    path = tmp_path / "fa.zarr"
    record(tiny_config(**{"train.epochs": 1, "probes.snapshot_every": 2}), path, progress=False)
    tree = open_run(path)
    n = tree["snapshots/fc1"].ds.sizes["snapshot"]
    calls = []
    exact = spectra.singular_values
    monkeypatch.setattr(spectra, "singular_values", lambda m: calls.append(m.shape) or exact(m))
    result = spectra.analyze(tree, top=None)
    assert n == 4 and len(calls) == 3 * n + 3  # W in every snapshot, B once, three layers
    b = result["singular_value"].sel(matrix="B", layer="fc1").values
    assert np.isfinite(b[:, :8]).all() and (b == b[0]).all()
