"""dynalign.analyses.autoencoder on synthetic autoencoder runs with known answers."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from matplotlib.figure import Figure
from synthetic_stores import make_run, read_run, write_run
from test_alignment import check_captions, check_figure

from dynalign.analyses import autoencoder as ae
from dynalign.analyses import figures
from dynalign.analyses.smoothing import AnalysisError

SIDE = 8
N_PROBE = 12
N_UNITS = 10
STEPS = 40


def probe_inputs(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0.1, 0.9, size=(N_PROBE, SIDE * SIDE))


def smooth_filters(n: int, seed: int) -> np.ndarray:
    """Low-frequency gratings: neighbouring pixels nearly equal."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIDE, 0:SIDE]
    out = []
    for _ in range(n):
        theta, phase = rng.uniform(0, np.pi), rng.uniform(0, 2 * np.pi)
        out.append(np.cos(0.5 * (np.cos(theta) * xx + np.sin(theta) * yy) + phase).ravel())
    return np.array(out)


def autoencoder_run(reconstruction: np.ndarray, inputs: np.ndarray, **overrides) -> xr.DataTree:
    """An autoencoder run whose reconstructions over 3 snapshots are ``reconstruction``."""
    rng = np.random.default_rng(1)
    init = rng.normal(size=(N_UNITS, SIDE * SIDE))
    final = overrides.pop("final_filters", init)
    config = {
        "model.kind": "autoencoder",
        "model.code_size": overrides.pop("code_size", 5),
        "data.name": overrides.pop("data_name", "digits"),
        "data.scaling": "unit",
        "data.data_dir": overrides.pop("data_dir", None),
    }
    rec = np.asarray(reconstruction, dtype=float)
    if rec.ndim == 2:
        rec = np.stack([rec, rec, rec])
    recon_loss = np.linspace(2.0, 1.0, STEPS)
    sparsity = np.full(STEPS, 0.25)
    return make_run(
        steps=STEPS,
        layers=["fc1", "fc2", "fc3"],
        config={k: v for k, v in config.items() if v is not None},
        loss=recon_loss + sparsity,
        extra_steps={"recon_loss": recon_loss, "sparsity_loss": sparsity},
        snapshots={"fc1": {"weight": np.stack([init, final]), "snapshot_step": [0, STEPS]}},
        reconstructions={
            "input": inputs,
            "reconstruction": rec,
            "snapshot_step": np.linspace(0, STEPS, rec.shape[0]).astype(int),
            "image_shape": [SIDE, SIDE],
        },
    )


# ------------------------------------------------------------------------------ numerics


def test_fvu_and_specificity_closed_forms():
    x = probe_inputs()
    mean = np.broadcast_to(x.mean(0), x.shape)
    assert ae.fvu(mean, x) == pytest.approx(1.0, abs=1e-12)
    assert ae.specificity(mean, x) == pytest.approx(0.0, abs=1e-12)
    assert ae.fvu(x, x) == 0.0
    assert ae.specificity(x, x) == pytest.approx(1.0)
    # Halfway between the probe mean and the input: error and spread are each a quarter.
    half = 0.5 * (x + mean)
    assert ae.fvu(half, x) == pytest.approx(0.25)
    assert ae.specificity(half, x) == pytest.approx(0.25)
    # A direct loop over probes and pixels, for one arbitrary reconstruction.
    r = np.random.default_rng(5).normal(size=x.shape)
    num = sum((r[p, i] - x[p, i]) ** 2 for p in range(N_PROBE) for i in range(x.shape[1]))
    den = sum((x[p, i] - x[:, i].mean()) ** 2 for p in range(N_PROBE) for i in range(x.shape[1]))
    assert ae.fvu(r, x) == pytest.approx(num / den)


def test_identical_probes_raise():
    x = np.ones((4, 16))
    with pytest.raises(AnalysisError, match="identical"):
        ae.fvu(x, x)


def test_pca_matches_covariance_eigendecomposition():
    rng = np.random.default_rng(2)
    train = rng.normal(size=(300, 16)) * np.linspace(3, 0.1, 16) + rng.normal(size=16)
    probes = rng.normal(size=(20, 16))
    k = 4
    mean = train.mean(0)
    evals, evecs = np.linalg.eigh(np.cov(train, rowvar=False))
    top = evecs[:, np.argsort(evals)[::-1][:k]]
    expected = mean + (probes - mean) @ top @ top.T
    np.testing.assert_allclose(ae.pca_reconstruction(train, probes, k), expected, atol=1e-10)


def test_pca_recovers_a_planted_subspace():
    rng = np.random.default_rng(3)
    basis = np.linalg.qr(rng.normal(size=(16, 3)))[0].T  # 3 orthonormal rows
    offset = rng.normal(size=16)
    train = rng.normal(size=(200, 3)) @ basis + offset
    probes = rng.normal(size=(10, 3)) @ basis + offset
    assert ae.fvu(ae.pca_reconstruction(train, probes, 3), probes) == pytest.approx(0, abs=1e-20)
    assert ae.fvu(ae.pca_reconstruction(train, probes, 2), probes) > 0.01


def test_neighbour_correlation_closed_forms():
    checker = (np.indices((SIDE, SIDE)).sum(0) % 2 * 2 - 1).astype(float)
    ramp = np.add.outer(np.arange(SIDE), np.arange(SIDE)).astype(float)  # f = i + j
    corr = ae.neighbour_correlation(np.stack([checker, ramp, np.ones((SIDE, SIDE))]))
    assert corr[0] == pytest.approx(-1.0)
    # For f = i + j every right or lower neighbour is exactly f + 1: perfect correlation.
    assert corr[1] == pytest.approx(1.0)
    assert np.isnan(corr[2])


def test_smooth_filters_score_higher_than_random():
    smooth = ae.neighbour_correlation(smooth_filters(50, 0).reshape(50, SIDE, SIDE))
    noise = ae.neighbour_correlation(np.random.default_rng(0).normal(size=(50, SIDE, SIDE)))
    assert smooth.mean() > 0.8
    assert abs(noise.mean()) < 0.1


# ------------------------------------------------------------------------------ analyze


def test_mean_image_autoencoder_does_not_reconstruct():
    x = probe_inputs()
    tree = autoencoder_run(np.broadcast_to(x.mean(0), x.shape), x)
    assert ae.applies(tree)
    result = ae.analyze(tree, baseline_data="probe")
    np.testing.assert_allclose(result["fvu"].values, 1.0, atol=1e-6)
    np.testing.assert_allclose(result["specificity"].values, 0.0, atol=1e-6)
    assert not bool(result["reconstructs"])
    assert result.attrs["verdict"] == "does not reconstruct"
    # Filters never moved: smoothness unchanged, perfectly correlated with init.
    assert float(result["smoothness_final"]) == pytest.approx(float(result["smoothness_init"]))
    assert float(result["filter_init_similarity"][-1]) == pytest.approx(1.0)


def test_perfect_autoencoder_reconstructs_with_learned_filters():
    x = probe_inputs()
    tree = autoencoder_run(x, x, final_filters=smooth_filters(N_UNITS, 4))
    result = ae.analyze(tree, baseline_data="probe")
    np.testing.assert_allclose(result["fvu"].values, 0.0, atol=1e-6)
    np.testing.assert_allclose(result["specificity"].values, 1.0, atol=1e-5)
    assert bool(result["reconstructs"])
    assert result.attrs["verdict"] == "reconstructs"
    assert float(result["smoothness_final"]) > float(result["smoothness_init"]) + 0.5
    assert abs(float(result["filter_init_similarity"][-1])) < 0.5


def test_verdict_thresholds_are_parameters():
    x = probe_inputs()
    mean = np.broadcast_to(x.mean(0), x.shape)
    tree = autoencoder_run(0.5 * (x + mean), x)  # FVU 0.25, specificity 0.25
    assert bool(ae.analyze(tree, baseline_data="probe")["reconstructs"])
    strict = ae.analyze(tree, baseline_data="probe", min_specificity=0.5)
    assert not bool(strict["reconstructs"])
    assert "specificity" in strict.attrs["verdict_reason"]
    with pytest.raises(AnalysisError, match="baseline_data"):
        ae.analyze(tree, baseline_data="nope")


def test_baselines_fitted_on_probes_match_independent_computation():
    x = probe_inputs()
    tree = autoencoder_run(x, x, code_size=4)
    result = ae.analyze(tree, baseline_data="probe")
    assert "probe inputs" in result.attrs["baseline_data"]
    assert result.attrs["pca_components"] == 4
    centred = x - x.mean(0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    resid = centred - centred @ vt[:4].T @ vt[:4]
    assert float(result["fvu_pca"]) == pytest.approx((resid**2).sum() / (centred**2).sum())
    # The mean image of the fitting data is the probe mean itself here: FVU exactly 1.
    assert float(result["fvu_mean_image"]) == pytest.approx(1.0)


def test_baselines_fitted_on_reloaded_training_data():
    from dynalign import data
    from dynalign.config import from_json

    x = probe_inputs()
    tree = autoencoder_run(x, x, code_size=6)
    result = ae.analyze(tree)  # digits, scaled to [0, 1]: loads in a second
    cfg = from_json(tree.attrs["config"])
    train = data.load(cfg.data, cfg.train.seed).x_train.numpy().reshape(-1, SIDE * SIDE)
    assert result.attrs["baseline_data"] == f"training data ({train.shape[0]} samples)"
    mean = train.mean(0, dtype=np.float64)
    expected_mean = ((x - mean) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
    assert float(result["fvu_mean_image"]) == pytest.approx(expected_mean, rel=1e-6)
    assert float(result["fvu_mean_image"]) > 1.0


def test_unloadable_training_data_falls_back_to_probes(tmp_path):
    x = probe_inputs()
    tree = autoencoder_run(x, x, data_name="mnist", data_dir=str(tmp_path / "nowhere"))
    result = ae.analyze(tree)
    assert result.attrs["baseline_data"].startswith("probe inputs")
    assert "training data not used" in result.attrs["baseline_data"]


def test_loss_split_start_and_end():
    x = probe_inputs()
    result = ae.analyze(autoencoder_run(x, x), baseline_data="probe")
    recon = np.linspace(2.0, 1.0, STEPS)
    n = max(1, round(ae.LOSS_WINDOW * STEPS))
    assert float(result["recon_loss_start"]) == pytest.approx(recon[:n].mean(), rel=1e-6)
    assert float(result["recon_loss_end"]) == pytest.approx(recon[-n:].mean(), rel=1e-6)
    assert float(result["sparsity_loss_end"]) == pytest.approx(0.25)
    assert result["loss"].sizes["step"] == STEPS


def test_store_roundtrip_and_non_autoencoder(tmp_path):
    x = probe_inputs()
    path = write_run(autoencoder_run(x, x), tmp_path / "ae.zarr")
    result = ae.analyze(read_run(path), baseline_data="probe")
    assert float(result["final_fvu"]) == pytest.approx(0.0, abs=1e-6)
    assert result.attrs["run"] == "ae"
    assert not ae.applies(make_run(steps=5))


def test_text_table_and_figures():
    x = probe_inputs()
    result = ae.analyze(autoencoder_run(x, x), baseline_data="probe")
    text = ae.table(result)
    assert "verdict: reconstructs" in text and "PCA (5 components)" in text
    for plot in (ae.plot_reconstructions, ae.plot_filters, ae.plot_fvu, ae.plot_loss):
        fig = plot(result)
        assert isinstance(fig, Figure) and fig.axes
    # A run tree is accepted as well and gives the same grid of images.
    grid = ae.plot_reconstructions(autoencoder_run(x, x), n_probes=4, n_times=2)
    assert len(grid.axes) == 1
    assert [t.get_text() for t in grid.axes[0].get_yticklabels()] == ["input", "0", "40"]
    assert grid.axes[0].get_ylabel() == "reconstruction at step"


UNITS = {
    "plot_reconstructions": ("pixels",),
    "plot_filters": ("pixels",),
    "plot_fvu": ("fraction", "step"),
    "plot_loss": ("per sample", "step"),
}


def test_figures_are_titled_labelled_and_draw_cleanly():
    x = probe_inputs()
    smooth_final = smooth_filters(N_UNITS, 3)
    result = ae.analyze(autoencoder_run(x * 0 + x.mean(0), x, final_filters=smooth_final))
    drawn = figures(ae, result)
    assert [name for name, _ in drawn] == list(UNITS)
    for name, fig in drawn:
        check_figure(fig, units=UNITS[name])
    assert "does not reconstruct" in ae.plot_reconstructions(result).get_suptitle()
    assert "log scale" not in ae.plot_loss(result).axes[0].get_ylabel()  # terms within 100x


def test_plot_docstrings_read_as_captions():
    check_captions(ae)
