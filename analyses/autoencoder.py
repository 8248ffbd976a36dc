"""Does an autoencoder run really reconstruct its inputs, or did only its loss fall?

The study saw a sparse autoencoder trained with FA whose loss fell while its reconstructions
did not improve and whose filters stayed random. This analysis separates those symptoms, each
measured on the fixed probe inputs the recorder stored (``reconstructions/input``):

Fraction of variance unexplained, per snapshot s, with x the probe inputs (probe p, pixel i),
r_s the reconstructions and x̄ the per-pixel mean of the probe inputs::

    FVU_s = sum_{p,i} (r_{s,p,i} - x_{p,i})^2  /  sum_{p,i} (x_{p,i} - x̄_i)^2

0 is perfect; a network that outputs the probe mean for every input scores exactly 1. Two
baselines are scored the same way on the same probes: the *mean image* (every probe
reconstructed as the mean training image, FVU >= 1) and *PCA* with as many components as the
code layer (``model.code_size``), fitted on the training data (centred at the training mean).

Input specificity, per snapshot: the spread of the reconstructions across probes relative to
the spread of the inputs::

    specificity_s = sum_{p,i} (r_{s,p,i} - r̄_{s,i})^2  /  sum_{p,i} (x_{p,i} - x̄_i)^2

0 means one image for every input; a perfect reconstruction scores 1.

Filter smoothness of the first layer (``snapshots/fc1/weight``, each unit's incoming weights
reshaped to the image): the Pearson correlation between horizontally and vertically
neighbouring weights of a filter, averaged over filters. Independent random weights score about
0; the initial snapshot is the reference. Similarity to init is the mean correlation of each
filter with its own initial values (near 1: the filters have hardly moved).

Verdict: "reconstructs" when the final FVU is below ``max_fvu_ratio`` times the mean-image
baseline AND the final specificity is at least ``min_specificity``; otherwise "does not
reconstruct" (also for non-finite reconstructions).
"""

from __future__ import annotations

import math

import numpy as np
import xarray as xr
from matplotlib.figure import Figure

from .smoothing import AnalysisError, format_table, provenance, run_config

NAME = "autoencoder"

#: first-layer group whose weights are read as image filters
FILTER_LAYER = "fc1"
#: share of the steps averaged for the loss at the start and at the end of a run
LOSS_WINDOW = 0.05
#: legend label of each loss term
LOSS_LABELS = {
    "loss": "total",
    "recon_loss": "reconstruction (½ squared error)",
    "sparsity_loss": "sparsity (β × KL)",
}


# ------------------------------------------------------------------------------- numerics


def _probe_variance(inputs: np.ndarray) -> float:
    """Summed squared deviation of the probes from their per-pixel mean: the FVU denominator."""
    total = float(((inputs - inputs.mean(axis=0)) ** 2).sum())
    if not total > 0:
        raise AnalysisError(
            "the probe inputs are all identical, so FVU and specificity are undefined; "
            "record the run with probes.n_probe_inputs of at least 2 distinct inputs"
        )
    return total


def fvu(reconstruction: np.ndarray, inputs: np.ndarray) -> np.ndarray:
    """FVU of ``reconstruction`` (..., probe, pixel) against ``inputs`` (probe, pixel)."""
    inputs = np.asarray(inputs, dtype=np.float64)
    err = ((np.asarray(reconstruction, dtype=np.float64) - inputs) ** 2).sum(axis=(-2, -1))
    return err / _probe_variance(inputs)


def specificity(reconstruction: np.ndarray, inputs: np.ndarray) -> np.ndarray:
    """Variance of ``reconstruction`` (..., probe, pixel) across probes over that of ``inputs``."""
    rec = np.asarray(reconstruction, dtype=np.float64)
    spread = ((rec - rec.mean(axis=-2, keepdims=True)) ** 2).sum(axis=(-2, -1))
    return spread / _probe_variance(np.asarray(inputs, dtype=np.float64))


def mean_image_reconstruction(train: np.ndarray, inputs: np.ndarray) -> np.ndarray:
    """Every probe reconstructed as the mean of ``train`` (samples, pixel)."""
    mean = np.asarray(train, dtype=np.float64).mean(axis=0)
    return np.broadcast_to(mean, np.shape(inputs)).copy()


def pca_reconstruction(train: np.ndarray, inputs: np.ndarray, n_components: int) -> np.ndarray:
    """Project ``inputs`` onto the top ``n_components`` principal axes of ``train`` and back."""
    train = np.asarray(train, dtype=np.float64)
    mean = train.mean(axis=0)
    _, _, vt = np.linalg.svd(train - mean, full_matrices=False)
    axes = vt[:n_components].T  # (pixel, k), orthonormal columns
    return mean + (np.asarray(inputs, dtype=np.float64) - mean) @ axes @ axes.T


def neighbour_correlation(filters: np.ndarray) -> np.ndarray:
    """Per filter (n, h, w): correlation of each weight with its right and lower neighbour.

    The horizontal and vertical pairs are pooled into one Pearson correlation; a filter with no
    variance gives NaN.
    """
    f = np.asarray(filters, dtype=np.float64)
    n = f.shape[0]
    a = np.concatenate([f[:, :, :-1].reshape(n, -1), f[:, :-1, :].reshape(n, -1)], axis=1)
    b = np.concatenate([f[:, :, 1:].reshape(n, -1), f[:, 1:, :].reshape(n, -1)], axis=1)
    return _row_correlation(a, b)


def _row_correlation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    denom = np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, (a * b).sum(axis=1) / denom, np.nan)


def _nanmean(values: np.ndarray) -> float:
    values = np.asarray(values, dtype=np.float64)
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else math.nan


# ------------------------------------------------------------------------------- reading


def applies(tree: xr.DataTree) -> bool:
    """An autoencoder run with at least one stored reconstruction snapshot."""
    if tree.attrs.get("task") != "reconstruction" or "reconstructions" not in tree.children:
        return False
    return tree["reconstructions"].sizes.get("snapshot", 0) > 0


def _image_shape(tree: xr.DataTree) -> tuple[int, int]:
    shape = tree["reconstructions"].attrs.get("image_shape")
    n_pix = tree["reconstructions"].sizes["pixel"]
    if shape is None or len(shape) != 2 or int(shape[0]) * int(shape[1]) != n_pix:
        side = math.isqrt(n_pix)
        if side * side != n_pix:
            raise AnalysisError(
                f"reconstructions have {n_pix} pixels but no usable image_shape attribute "
                f"({shape!r}); the store must record image_shape [h, w] with h*w = {n_pix}"
            )
        return side, side
    return int(shape[0]), int(shape[1])


def _probe_data(tree: xr.DataTree) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Probe inputs (probe, pixel), reconstructions (snapshot, probe, pixel), their steps."""
    if "reconstructions" not in tree.children:
        raise AnalysisError(
            "the store has no reconstructions group; the autoencoder analysis needs an "
            "autoencoder run recorded with probes.reconstruction_every > 0"
        )
    group = tree["reconstructions"]
    missing = [v for v in ("input", "reconstruction", "snapshot_step") if v not in group]
    if missing:
        raise AnalysisError(
            f"reconstructions group lacks {', '.join(missing)}; the store is incomplete"
        )
    inputs = np.asarray(group["input"].values, dtype=np.float64)
    recs = np.asarray(group["reconstruction"].values, dtype=np.float64)
    steps = np.asarray(group["snapshot_step"].values, dtype=np.int64)
    if recs.shape[0] == 0:
        raise AnalysisError(
            "no reconstruction snapshots were recorded; record with probes.reconstruction_every > 0"
        )
    return inputs, recs, steps


def _training_data(tree: xr.DataTree, n_pixels: int) -> tuple[np.ndarray | None, str]:
    """The run's training inputs (samples, pixel), reloaded from its config, or why not."""
    try:
        from dynalign import data
        from dynalign.config import from_json

        cfg = from_json(tree.attrs["config"])
        ds = data.load(cfg.data, cfg.train.seed)
        train = np.asarray(ds.x_train, dtype=np.float64)
    except (ImportError, KeyError, OSError, ValueError) as err:
        return None, f"{type(err).__name__}: {err}"
    train = train.reshape(train.shape[0], -1)
    if train.shape[1] != n_pixels:
        return None, f"training inputs have {train.shape[1]} pixels, the probes {n_pixels}"
    return train, ""


def _filters(tree: xr.DataTree, n_pixels: int) -> tuple[np.ndarray, np.ndarray] | None:
    """First-layer weights (snapshot, unit, pixel) and their steps, if stored and image-shaped."""
    path = f"snapshots/{FILTER_LAYER}"
    try:
        group = tree[path]
    except KeyError:
        return None
    if "weight" not in group or group["weight"].ndim != 3 or group.sizes.get("snapshot", 0) == 0:
        return None
    weight = np.asarray(group["weight"].values, dtype=np.float64)
    if weight.shape[2] != n_pixels:
        return None
    return weight, np.asarray(group["snapshot_step"].values, dtype=np.int64)


def _window_mean(values: np.ndarray, end: bool) -> float:
    n = max(1, int(round(LOSS_WINDOW * values.size)))
    return _nanmean(values[-n:] if end else values[:n])


# ------------------------------------------------------------------------------- analysis


def analyze(
    tree: xr.DataTree,
    baseline_data: str = "train",
    max_fvu_ratio: float = 0.5,
    min_specificity: float = 0.2,
) -> xr.Dataset:
    """FVU, specificity, baselines, loss split, filter structure and a verdict for one run.

    ``baseline_data``: "train" fits the baselines on the run's reloaded training data (falling
    back to the probe inputs when it cannot be loaded: attr ``baseline_data`` says which was
    used), "probe" fits them on the probe inputs directly.
    """
    if baseline_data not in ("train", "probe"):
        raise AnalysisError(f"baseline_data={baseline_data!r} is not one of: train, probe")
    if not max_fvu_ratio > 0:
        raise AnalysisError(f"max_fvu_ratio={max_fvu_ratio!r} must be greater than 0")
    inputs, recs, rec_steps = _probe_data(tree)
    n_probe, n_pix = inputs.shape
    image_shape = _image_shape(tree)
    config = run_config(tree)
    code_size = int(config.get("model", {}).get("code_size", 0)) or None

    train, why = (None, "baseline_data=probe was asked for")
    if baseline_data == "train":
        train, why = _training_data(tree, n_pix)
    if train is None:
        train, source = inputs, f"probe inputs ({n_probe} probes); training data not used: {why}"
    else:
        source = f"training data ({train.shape[0]} samples)"
    n_components = min(code_size or n_pix, train.shape[0], n_pix)

    fvu_t = fvu(recs, inputs)
    spec_t = specificity(recs, inputs)
    mean_rec = mean_image_reconstruction(train, inputs)
    pca_rec = pca_reconstruction(train, inputs, n_components)

    ds = xr.Dataset(
        coords={"snapshot_step": ("snapshot", rec_steps)},
        data_vars={
            "fvu": ("snapshot", fvu_t, _meta("fraction of variance unexplained on the probes")),
            "specificity": (
                "snapshot",
                spec_t,
                _meta("variance of reconstructions across probes / of the inputs"),
            ),
            "input": (("probe", "pixel"), inputs, _meta("probe inputs")),
            "reconstruction": (
                ("snapshot", "probe", "pixel"),
                recs,
                _meta("reconstructions of the probe inputs"),
            ),
            "fvu_mean_image": (
                (),
                float(fvu(mean_rec, inputs)),
                _meta("FVU of the mean training image"),
            ),
            "fvu_pca": (
                (),
                float(fvu(pca_rec, inputs)),
                _meta(f"FVU of PCA with {n_components} components"),
            ),
            "specificity_pca": (
                (),
                float(specificity(pca_rec, inputs)),
                _meta("specificity of the PCA reconstruction"),
            ),
            "final_fvu": ((), float(fvu_t[-1]), _meta("FVU at the last snapshot")),
            "final_specificity": ((), float(spec_t[-1]), _meta("specificity at the last snapshot")),
        },
    )
    ds = ds.merge(_loss_split(tree))
    ds = ds.merge(_filter_structure(tree, n_pix, image_shape))

    reconstructs, reason = _verdict(
        float(fvu_t[-1]),
        float(spec_t[-1]),
        float(ds["fvu_mean_image"]),
        max_fvu_ratio,
        min_specificity,
    )
    ds["reconstructs"] = ((), reconstructs, _meta("verdict: the run reconstructs its inputs"))
    ds.attrs.update(
        provenance(
            tree,
            NAME,
            baseline_data=baseline_data,
            max_fvu_ratio=max_fvu_ratio,
            min_specificity=min_specificity,
        )
    )
    ds.attrs.update(
        {
            "verdict": "reconstructs" if reconstructs else "does not reconstruct",
            "verdict_reason": reason,
            "criteria": (
                f"reconstructs if final FVU < {max_fvu_ratio:g} x mean-image FVU and "
                f"final specificity >= {min_specificity:g}"
            ),
            "baseline_data": source,
            "pca_components": n_components,
            "image_shape": list(image_shape),
            "fvu_definition": "sum (r - x)^2 / sum (x - mean_probes(x))^2 over probes and pixels",
        }
    )
    return ds


def _meta(long_name: str, units: str = "1") -> dict[str, str]:
    return {"long_name": long_name, "units": units}


def _verdict(
    final_fvu: float, final_spec: float, fvu_mean: float, max_ratio: float, min_spec: float
) -> tuple[bool, str]:
    if not (math.isfinite(final_fvu) and math.isfinite(final_spec)):
        return False, "final reconstructions are not finite"
    low_error = final_fvu < max_ratio * fvu_mean
    specific = final_spec >= min_spec
    reason = (
        f"final FVU {final_fvu:.3g} {'<' if low_error else '>='} {max_ratio:g} x mean-image "
        f"FVU {fvu_mean:.3g}; specificity {final_spec:.3g} {'>=' if specific else '<'} {min_spec:g}"
    )
    return low_error and specific, reason


def _loss_split(tree: xr.DataTree) -> xr.Dataset:
    """Total, reconstruction and sparsity loss per step, and their start and end values."""
    if "steps" not in tree.children:
        return xr.Dataset()
    steps = tree["steps"]
    terms = [t for t in ("loss", "recon_loss", "sparsity_loss") if t in steps]
    out = xr.Dataset()
    for term in terms:
        values = np.asarray(steps[term].values, dtype=np.float64)
        label = term.replace("_", " ")
        out[term] = xr.DataArray(
            values,
            dims="step",
            coords={"step": steps["step"].values},
            attrs=_meta(f"training {label} per step"),
        )
        out[f"{term}_start"] = (
            (),
            _window_mean(values, end=False),
            _meta(f"{label}, mean over the first {LOSS_WINDOW:.0%} of steps"),
        )
        out[f"{term}_end"] = (
            (),
            _window_mean(values, end=True),
            _meta(f"{label}, mean over the last {LOSS_WINDOW:.0%} of steps"),
        )
    return out


def _filter_structure(tree: xr.DataTree, n_pix: int, image_shape: tuple[int, int]) -> xr.Dataset:
    """Smoothness and similarity to init of the first-layer filters at every snapshot."""
    found = _filters(tree, n_pix)
    if found is None:
        return xr.Dataset()
    weight, steps = found
    n_snap, n_units, _ = weight.shape
    smooth = np.array(
        [_nanmean(neighbour_correlation(w.reshape(n_units, *image_shape))) for w in weight]
    )
    similar = np.array([_nanmean(_row_correlation(w, weight[0])) for w in weight])
    return xr.Dataset(
        coords={"filter_step": ("filter_snapshot", steps)},
        data_vars={
            "filter_smoothness": (
                "filter_snapshot",
                smooth,
                _meta(f"{FILTER_LAYER} mean neighbouring-pixel correlation"),
            ),
            "filter_init_similarity": (
                "filter_snapshot",
                similar,
                _meta(f"{FILTER_LAYER} mean correlation with init"),
            ),
            "filters_init": (("unit", "pixel"), weight[0], _meta(f"{FILTER_LAYER} at init")),
            "filters_final": (("unit", "pixel"), weight[-1], _meta(f"{FILTER_LAYER} at the end")),
            "smoothness_init": ((), float(smooth[0]), _meta("filter smoothness at init")),
            "smoothness_final": ((), float(smooth[-1]), _meta("filter smoothness at the end")),
        },
    )


# ------------------------------------------------------------------------------- table


def table(result: xr.Dataset, max_rows: int = 8) -> str:
    """Readable summary: FVU and specificity over time, baselines, loss split, filters, verdict."""
    lines = [f"autoencoder — {result.attrs.get('run', '')} ({result.attrs.get('status', '')})"]
    lines.append("reconstruction of the probe inputs (FVU: 0 perfect, 1 = the probe mean)")
    rows = [
        [
            str(int(result["snapshot_step"][i])),
            f"{float(result['fvu'][i]):.4f}",
            f"{float(result['specificity'][i]):.4f}",
        ]
        for i in _spread_indices(result.sizes["snapshot"], max_rows)
    ]
    lines += format_table(["step", "FVU", "specificity"], rows, left=0)
    lines.append(
        f"baselines: mean image FVU {float(result['fvu_mean_image']):.4f}; "
        f"PCA ({result.attrs['pca_components']} components) FVU {float(result['fvu_pca']):.4f}, "
        f"specificity {float(result['specificity_pca']):.4f}"
    )
    lines.append(f"baselines fitted on: {result.attrs['baseline_data']}")
    if "recon_loss_start" in result:
        lines.append(f"loss terms (mean of the first -> last {LOSS_WINDOW:.0%} of steps):")
        for term in ("loss", "recon_loss", "sparsity_loss"):
            if f"{term}_start" in result:
                lines.append(
                    f"  {term:<14} {float(result[f'{term}_start']):>10.4g} -> "
                    f"{float(result[f'{term}_end']):.4g}"
                )
    if "filter_smoothness" in result:
        lines.append(
            f"{FILTER_LAYER} filters: smoothness "
            f"{float(result['smoothness_init']):.3f} (init) -> "
            f"{float(result['smoothness_final']):.3f} (end); correlation with init at the end "
            f"{float(result['filter_init_similarity'][-1]):.3f}"
        )
    else:
        lines.append(f"{FILTER_LAYER} filters: no image-shaped snapshots stored")
    lines.append(f"verdict: {result.attrs['verdict']} ({result.attrs['verdict_reason']})")
    return "\n".join(lines)


def _spread_indices(n: int, k: int) -> list[int]:
    """Up to ``k`` indices spread evenly over range(n), always with the first and the last."""
    if n <= k:
        return list(range(n))
    return sorted({int(round(i)) for i in np.linspace(0, n - 1, k)})


# ------------------------------------------------------------------------------- figures


def _as_result(obj: xr.Dataset | xr.DataTree) -> xr.Dataset:
    """A result Dataset; a run tree is analysed with the probe-fitted baselines (no data reload)."""
    if isinstance(obj, xr.DataTree):
        return analyze(obj, baseline_data="probe")
    return obj


def _mosaic(images: np.ndarray, n_cols: int, pad: float = np.nan) -> np.ndarray:
    """Tile images (n, h, w) into one array, ``n_cols`` per row, separated by ``pad``."""
    n, h, w = images.shape
    n_rows = -(-n // n_cols)
    out = np.full((n_rows * (h + 1) - 1, n_cols * (w + 1) - 1), pad)
    for k, img in enumerate(images):
        r, c = divmod(k, n_cols)
        out[r * (h + 1) : r * (h + 1) + h, c * (w + 1) : c * (w + 1) + w] = img
    return out


def plot_reconstructions(
    obj: xr.Dataset | xr.DataTree, n_probes: int = 8, n_times: int = 4
) -> Figure:
    """Probe inputs (top row) and the network's reconstructions of them as training went on.

    Up to ``n_probes`` probes (columns) at up to ``n_times`` snapshots spread over the run
    (rows), all on the grey scale of the inputs.
    """
    result = _as_result(obj)
    shape = tuple(result.attrs["image_shape"])
    inputs = result["input"].values[:n_probes]
    times = _spread_indices(result.sizes["snapshot"], n_times)
    rows = [("input", inputs)] + [
        (str(int(result["snapshot_step"][t])), result["reconstruction"].values[t, :n_probes])
        for t in times
    ]
    h, w = shape
    # One mosaic image (row: input or a snapshot, column: a probe) draws far faster than a grid
    # of small axes; rows are labelled through the y ticks.
    mosaic = _mosaic(np.concatenate([imgs for _, imgs in rows]).reshape(-1, h, w), len(inputs))
    fig = Figure(figsize=(0.9 * len(inputs) + 1.6, 0.9 * len(rows) + 1.0), layout="constrained")
    ax = fig.subplots()
    lo, hi = float(np.nanmin(inputs)), float(np.nanmax(inputs))
    ax.imshow(mosaic, cmap="gray", vmin=lo, vmax=hi)
    ax.set_xticks([])
    ax.set_yticks([r * (h + 1) + (h - 1) / 2 for r in range(len(rows))], [lab for lab, _ in rows])
    ax.tick_params(length=0, labelsize=8)
    ax.set_xlabel(f"probe input ({len(inputs)} of {result.sizes['probe']}, {h}×{w} pixels)")
    ax.set_ylabel("reconstruction at step")
    fig.suptitle(f"Reconstructions of the probe inputs — {result.attrs.get('verdict', '')}")
    return fig


def plot_filters(obj: xr.Dataset | xr.DataTree, n_filters: int = 64) -> Figure | None:
    """First-layer filters at initialisation and at the end of training, each on its own scale."""
    result = _as_result(obj)
    if "filters_init" not in result:
        return None
    shape = tuple(result.attrs["image_shape"])
    fig = Figure(figsize=(9, 5.0), layout="constrained")
    axes = fig.subplots(1, 2)
    steps = result["filter_step"].values
    panels = (
        (axes[0], "filters_init", "smoothness_init", f"initial (step {steps[0]})"),
        (axes[1], "filters_final", "smoothness_final", f"final (step {steps[-1]})"),
    )
    for ax, name, key, when in panels:
        w = result[name].values[:n_filters]
        scale = np.abs(w).max(axis=1, keepdims=True)
        w = np.where(scale > 0, w / np.where(scale > 0, scale, 1), 0.0)
        n_cols = math.ceil(math.sqrt(len(w)))
        ax.imshow(_mosaic(w.reshape(-1, *shape), n_cols), cmap="RdBu_r", vmin=-1, vmax=1)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"{when}: smoothness {float(result[key]):.2f}", fontsize=10)
        ax.set_xlabel(f"{len(w)} units, {shape[0]}×{shape[1]} pixels; red +, blue −")
        ax.set_ylabel("weight / max |weight| of its unit")
    fig.suptitle(f"{FILTER_LAYER} filters (smoothness: mean neighbouring-pixel correlation)")
    return fig


def plot_fvu(result: xr.Dataset) -> Figure:
    """Reconstruction error (FVU) and input specificity over training, against two baselines."""
    result = _as_result(result)
    fig = Figure(figsize=(7.6, 3.8), layout="constrained")
    ax = fig.subplots()
    steps = result["snapshot_step"].values
    ax.plot(steps, result["fvu"].values, marker="o", label="FVU (network)")
    ax.plot(steps, result["specificity"].values, marker=".", ls="--", label="specificity")
    ax.axhline(float(result["fvu_mean_image"]), color="grey", ls=":", label="FVU, mean image")
    ax.axhline(
        float(result["fvu_pca"]),
        color="green",
        ls=":",
        label=f"FVU, PCA ({result.attrs['pca_components']} comp.)",
    )
    ax.set_xlabel("step")
    ax.set_ylabel("fraction of probe variance")
    ax.set_ylim(bottom=0)
    fig.legend(loc="outside right upper", fontsize="small")
    ax.set_title(f"Reconstruction error against baselines — {result.attrs.get('verdict', '')}")
    return fig


def plot_loss(result: xr.Dataset) -> Figure | None:
    """Training loss per step split into its reconstruction and sparsity terms."""
    result = _as_result(result)
    if "recon_loss" not in result:
        return None
    fig = Figure(figsize=(7.6, 3.8), layout="constrained")
    ax = fig.subplots()
    steps = result["step"].values
    terms = [t for t in ("loss", "recon_loss", "sparsity_loss") if t in result]
    for term in terms:
        ax.plot(steps, result[term].values, lw=1, label=LOSS_LABELS.get(term, term))
    values = np.concatenate([result[t].values for t in terms])
    values = values[np.isfinite(values)]
    # Terms orders of magnitude apart (a dominant sparsity penalty) share a log axis.
    log = bool(values.size and values.min() > 0 and values.max() / values.min() > 100)
    if log:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss per sample, batch mean" + (" (log scale)" if log else ""))
    fig.legend(loc="outside right upper", fontsize="small")
    ax.set_title("Training loss and its terms")
    return fig
