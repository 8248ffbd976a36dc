"""Singular-value spectra of the forward weights W and feedback weights B over training.

For every layer with weight snapshots and every snapshot this keeps the largest ``top``
singular values of W and, where the run stores one, of B, and summarises each whole spectrum
(all min(m, n) values, not only the kept ones) by its normalised SVD entropy

    H = -sum_i p_i ln p_i / ln n,    p_i = sigma_i / sum_j sigma_j,    n = min(m, n)

(1: all singular values equal, as for a scaled orthogonal matrix; 0: rank 1), the measure of
spectrum pathology that Li et al. (2023, "Learning better with Dale's Law: a spectral
perspective", NeurIPS) relate to how well sign-constrained (E/I) recurrent nets learn. p
normalises the singular values themselves (sigma, not sigma^2: not the spectrum of W W^T), so
exp(H ln n) is the effective rank of Roy & Vetterli (2007), between 1 and n. Zero singular
values count in n, so a rank-r matrix with r equal singular values has H = ln r / ln n.

A weight of shape (out, in, kh, kw) is read as the (out, in*kh*kw) matrix it applies to an
input patch; any stored tensor as (its first dim, the product of the rest), so a feedback
matrix whose shape differs from the weight's (direct feedback alignment: (classes, in)) gets
its own spectrum. For the RNN's hidden-to-hidden weight (a layer named ``*.H``) the spectral
radius, the largest eigenvalue modulus of W, is tracked as well: it, not the largest singular
value, decides whether the linearised recurrence grows (> 1) or decays (< 1).

Singular values come from the eigenvalues of the float64 Gram matrix of the smaller side
(vectors never formed; for a 512 x 3072 layer many times faster than LAPACK's SVD). Its error on a
singular value is about sqrt(n eps_64) sigma_1, below the float32 rounding of the stored
weights, and values under numpy's numerical-rank tolerance sigma_1 max(m, n) eps_32 count as 0
(rounding noise of a lower-rank matrix, not spectrum). Snapshots are read one storage chunk at
a time (one snapshot in the recorder's stores), so memory stays flat however long the run.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import xarray as xr
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from scipy.special import xlogy

from dynalign.analyses.alignment import layer_colors
from dynalign.analyses.smoothing import AnalysisError, format_table, provenance
from dynalign.schema import FIXED

NAME = "spectra"
#: the matrices analysed, and the snapshot array each is stored as
MATRICES = {"W": "weight", "B": "feedback"}
#: a layer whose name ends so is a recurrent (hidden-to-hidden) weight
RECURRENT_SUFFIX = ".H"
#: stored weights are float32: the tolerance under which a singular value is rounding noise
STORED_EPS = float(np.finfo(np.float32).eps)
#: the most bytes of snapshots read at once (at least one snapshot is)
READ_BYTES = 64 * 2**20
#: line style of each matrix in the figures
STYLES = {"W": "-", "B": "--"}


# ---------------------------------------------------------------------------- linear algebra


def as_matrix(tensor: np.ndarray) -> np.ndarray:
    """A weight tensor as the float64 matrix it applies: (out, in[, kh, kw]) -> (out, in*kh*kw)."""
    a = np.atleast_1d(np.asarray(tensor, dtype=np.float64))
    return a.reshape(a.shape[0], -1)


def singular_values(matrix: np.ndarray) -> np.ndarray:
    """All min(m, n) singular values of a matrix, largest first, in float64.

    From the eigenvalues of the Gram matrix of the smaller side; values at or below
    sigma_1 max(m, n) eps_float32 are set to 0 (see the module docstring). A matrix with a
    non-finite entry gets NaN throughout.
    """
    a = np.asarray(matrix, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"singular_values needs a matrix, got shape {a.shape}")
    n = min(a.shape)
    if n == 0 or not np.isfinite(a).all():
        return np.full(n, np.nan)
    small = a if a.shape[0] <= a.shape[1] else a.T
    eig = np.linalg.eigvalsh(small @ small.T)[::-1]
    s = np.sqrt(np.clip(eig, 0.0, None))
    s[s <= s[0] * max(a.shape) * STORED_EPS] = 0.0
    return s


def svd_entropy(s: np.ndarray) -> float:
    """Normalised SVD entropy -sum p ln p / ln n of singular values ``s`` (p = s / sum s).

    n is the number of values given (zeros included); NaN when n < 2, the values sum to 0
    or one is not finite.
    """
    s = np.asarray(s, dtype=np.float64)
    total = s.sum()
    if s.size < 2 or not np.isfinite(total) or total <= 0:
        return math.nan
    p = s / total
    return float(-xlogy(p, p).sum() / math.log(s.size))


def effective_rank(entropy: float, n: int) -> float:
    """exp(H ln n): the number of equal singular values with the same entropy (1 .. n)."""
    return float(math.exp(entropy * math.log(n))) if n >= 2 else math.nan


def spectral_radius(matrix: np.ndarray) -> float:
    """Largest eigenvalue modulus of a square matrix (NaN if not square or not finite)."""
    a = np.asarray(matrix, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] != a.shape[1] or a.size == 0 or not np.isfinite(a).all():
        return math.nan
    return float(np.abs(np.linalg.eigvals(a)).max())


def is_recurrent(layer: str) -> bool:
    """The RNN's hidden-to-hidden weight (``rnn.H``): its spectral radius is tracked."""
    return layer.endswith(RECURRENT_SUFFIX)


# ---------------------------------------------------------------------------- reading


def _has_snapshots(node: xr.DataTree) -> bool:
    return "weight" in node and "snapshot_step" in node and node.sizes.get("snapshot", 0) > 0


def snapshot_layers(tree: xr.DataTree) -> list[str]:
    """Layers with at least one weight snapshot, in the run's layer order (then by name)."""
    if "snapshots" not in tree.children:
        return []
    children = tree["snapshots"].children
    present = [name for name, node in children.items() if _has_snapshots(node)]
    order = [str(layer) for layer in tree.attrs.get("layers", []) or []]
    return [n for n in order if n in present] + sorted(n for n in present if n not in order)


def applies(tree: xr.DataTree) -> bool:
    """Any run that stored weight snapshots (probes.snapshot_every > 0), at least one."""
    return bool(snapshot_layers(tree))


def _check_top(top: int | None) -> None:
    if top is None:
        return
    if isinstance(top, bool) or not isinstance(top, (int, np.integer)) or top < 1:
        raise AnalysisError(
            f"top={top!r} must be a whole number >= 1 (singular values kept per matrix and "
            "snapshot), e.g. top=32, or None for all"
        )


# ---------------------------------------------------------------------------- analysis


def analyze(tree: xr.DataTree, top: int | None = 32) -> xr.Dataset:
    """Singular values, normalised SVD entropy and effective rank of W and B per layer and
    snapshot; the spectral radius of recurrent weights; first and last values per layer.

    top: singular values kept per matrix and snapshot, largest first (None: all). The entropy
        and effective rank always use the whole spectrum. Layers with fewer values are padded
        with NaN, as is B where the run stores no feedback matrix (backprop).
    """
    _check_top(top)
    layers = snapshot_layers(tree)
    if not layers:
        raise AnalysisError(
            "this run stored no weight snapshots; spectra needs a run recorded with "
            "probes.snapshot_every > 0"
        )
    nodes = {layer: tree["snapshots"][layer] for layer in layers}
    layer_steps = {
        layer: np.asarray(node["snapshot_step"].values, dtype=np.int64)
        for layer, node in nodes.items()
    }
    steps = np.unique(np.concatenate(list(layer_steps.values())))
    shapes = {
        (m, layer): (int(node[array].shape[1]), int(np.prod(node[array].shape[2:], dtype=int)))
        for layer, node in nodes.items()
        for m, array in MATRICES.items()
        if array in node and node[array].ndim >= 2
    }
    if not shapes:
        raise AnalysisError(
            f"the weight snapshots of {', '.join(layers)} are not matrices (out, in[, kh, kw]); "
            "the store is damaged or not a dynalign run"
        )
    widest = max(min(shape) for shape in shapes.values())
    keep = max(1, widest if top is None else min(int(top), widest))

    n_m, n_l, n_s = len(MATRICES), len(layers), steps.size
    sv = np.full((n_m, n_l, n_s, keep), np.nan)
    entropy = np.full((n_m, n_l, n_s), np.nan)
    erank = np.full((n_m, n_l, n_s), np.nan)
    size = np.full((3, n_m, n_l), np.nan)  # rows, cols, n
    radius = np.full((n_l, n_s), np.nan)
    for j, layer in enumerate(layers):
        node = nodes[layer]
        where = np.searchsorted(steps, layer_steps[layer])
        for i, (m, array) in enumerate(MATRICES.items()):
            if (m, layer) not in shapes:
                continue
            rows, cols = shapes[m, layer]
            n = min(rows, cols)
            size[:, i, j] = rows, cols, n
            for k, matrix, s in _spectra(node[array].variable):
                t = where[k]
                sv[i, j, t, : min(keep, n)] = s[:keep]
                entropy[i, j, t] = svd_entropy(s)
                erank[i, j, t] = effective_rank(entropy[i, j, t], n)
                if m == "W" and is_recurrent(layer):
                    radius[j, t] = spectral_radius(matrix)

    first_last = {
        name: _first_last(values)
        for name, values in (
            ("entropy", entropy),
            ("effective_rank", erank),
            ("sigma_max", sv[..., 0]),
            ("spectral_radius", radius),
        )
    }
    ml, mls = ("matrix", "layer"), ("matrix", "layer", "snapshot")
    result = xr.Dataset(
        {
            "singular_value": (
                ("matrix", "layer", "snapshot", "index"),
                sv,
                _a("1", f"largest {keep} singular values (NaN: no such value or matrix)"),
            ),
            "svd_entropy": (
                mls,
                entropy,
                _a("1", "normalised SVD entropy -sum p ln p / ln n, p = sigma / sum sigma"),
            ),
            "effective_rank": (mls, erank, _a("1", "effective rank exp(H ln n), 1 .. n")),
            "spectral_radius": (
                ("layer", "snapshot"),
                radius,
                _a("1", "largest eigenvalue modulus of a recurrent W (NaN: not recurrent)"),
            ),
            "rows": (ml, size[0], _a("1", "rows of the matrix (out)")),
            "cols": (ml, size[1], _a("1", "columns of the matrix (in x kh x kw)")),
            "n_singular": (
                ml,
                size[2],
                _a("1", "singular values in the spectrum, min(rows, cols)"),
            ),
            "entropy_initial": (
                ml,
                first_last["entropy"][0],
                _a("1", "SVD entropy at the first snapshot with finite weights"),
            ),
            "entropy_final": (
                ml,
                first_last["entropy"][1],
                _a("1", "SVD entropy at the last snapshot with finite weights"),
            ),
            "effective_rank_initial": (
                ml,
                first_last["effective_rank"][0],
                _a("1", "effective rank at the first snapshot"),
            ),
            "effective_rank_final": (
                ml,
                first_last["effective_rank"][1],
                _a("1", "effective rank at the last snapshot"),
            ),
            "sigma_max_initial": (
                ml,
                first_last["sigma_max"][0],
                _a("1", "largest singular value at the first snapshot"),
            ),
            "sigma_max_final": (
                ml,
                first_last["sigma_max"][1],
                _a("1", "largest singular value at the last snapshot"),
            ),
            "spectral_radius_initial": (
                ("layer",),
                first_last["spectral_radius"][0],
                _a("1", "spectral radius of a recurrent W at the first snapshot"),
            ),
            "spectral_radius_final": (
                ("layer",),
                first_last["spectral_radius"][1],
                _a("1", "spectral radius of a recurrent W at the last snapshot"),
            ),
        },
        coords={
            "matrix": np.array(list(MATRICES), dtype=object),
            "layer": np.array(layers, dtype=object),
            "snapshot_step": ("snapshot", steps, _a("1", "optimiser step of the snapshot")),
            "index": (
                "index",
                np.arange(1, keep + 1),
                _a("1", "singular value index (1: largest)"),
            ),
        },
    )
    result.attrs.update(provenance(tree, NAME, top=None if top is None else int(top)))
    return result


def _spectra(variable: xr.Variable):
    """(index, matrix, singular values) of every snapshot; of a B stored once (a store's
    ``fixed`` array: the same in every snapshot) worked out once."""
    if variable.attrs.get(FIXED) and variable.shape[0]:
        matrix = as_matrix(np.asarray(variable[0].values))
        s = singular_values(matrix)
        for k in range(variable.shape[0]):
            yield k, matrix, s
        return
    for k, tensor in _snapshots(variable):
        matrix = as_matrix(tensor)
        yield k, matrix, singular_values(matrix)


def _snapshots(variable: xr.Variable):
    """(index, tensor) of every snapshot, read one storage chunk at a time: one snapshot from
    the recorder's stores (one per chunk), several from a store chunked over snapshots
    (xarray's default), so no chunk is decoded once per snapshot; at most READ_BYTES a read."""
    n = variable.shape[0]
    per_snapshot = max(1, math.prod(variable.shape[1:]) * variable.dtype.itemsize)
    encoding = variable.encoding
    chunk = (encoding.get("preferred_chunks") or {}).get("snapshot")
    chunk = chunk or (encoding.get("chunks") or (1,))[0]
    block = max(1, min(int(chunk), READ_BYTES // per_snapshot))
    for start in range(0, n, block):
        values = np.asarray(variable[start : start + block].values)
        for k in range(values.shape[0]):
            yield start + k, values[k]


def _first_last(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The first and the last finite value along the last axis (NaN where there is none)."""
    finite = np.isfinite(values)
    any_ = finite.any(axis=-1)
    first = np.take_along_axis(values, np.argmax(finite, axis=-1)[..., None], -1)[..., 0]
    last_i = values.shape[-1] - 1 - np.argmax(finite[..., ::-1], axis=-1)
    last = np.take_along_axis(values, last_i[..., None], -1)[..., 0]
    return np.where(any_, first, np.nan), np.where(any_, last, np.nan)


def _a(units: str, long_name: str) -> dict[str, str]:
    return {"units": units, "long_name": long_name}


# ---------------------------------------------------------------------------- output


def _num(value: float, digits: int = 3) -> str:
    return "-" if not np.isfinite(value) else f"{value:.{digits}f}"


def _present(result: xr.Dataset, matrix: str, layer: str) -> bool:
    return bool(np.isfinite(result["n_singular"].sel(matrix=matrix, layer=layer)))


def _shape(result: xr.Dataset, matrix: str, layer: str) -> str:
    r = result.sel(matrix=matrix, layer=layer)
    return f"{int(r['rows'])}×{int(r['cols'])}"


def _recurrent(result: xr.Dataset) -> list[str]:
    finite = np.isfinite(result["spectral_radius"]).any(dim="snapshot")
    return [str(layer) for layer in result["layer"].values[finite.values]]


def table(result: xr.Dataset) -> str:
    """Per layer and matrix: shape, SVD entropy, effective rank and sigma_1, first and last."""
    steps = result["snapshot_step"].values
    lines = [
        f"spectra — {result.attrs.get('run', '')} ({result.attrs.get('status', '')})",
        "H: normalised SVD entropy −Σ p ln p / ln n, p = σ/Σσ over all n = min(rows, cols) "
        "singular values",
        "   (1: flat spectrum, 0: rank 1); eff. rank = exp(H ln n); σ1: largest singular value",
        f"{steps.size} snapshot{'' if steps.size == 1 else 's'}: first at step {steps[0]}, "
        f"last at step {steps[-1]}",
    ]
    head = [
        "layer",
        "matrix",
        "shape",
        "H first",
        "H last",
        "eff. rank first",
        "eff. rank last",
        "σ1 first",
        "σ1 last",
    ]
    rows = []
    for layer in map(str, result["layer"].values):
        for matrix in map(str, result["matrix"].values):
            if not _present(result, matrix, layer):
                continue
            r = result.sel(matrix=matrix, layer=layer)
            rows.append(
                [
                    layer,
                    matrix,
                    _shape(result, matrix, layer),
                    _num(float(r["entropy_initial"])),
                    _num(float(r["entropy_final"])),
                    _num(float(r["effective_rank_initial"]), 1),
                    _num(float(r["effective_rank_final"]), 1),
                    _num(float(r["sigma_max_initial"])),
                    _num(float(r["sigma_max_final"])),
                ]
            )
    lines += format_table(head, rows, left=3)
    if not any(_present(result, "B", str(layer)) for layer in result["layer"].values):
        lines.append("no feedback matrices B stored (a backprop run): W only")
    for layer in _recurrent(result):
        r = result.sel(layer=layer)
        lines.append(
            f"spectral radius of {layer} (largest |eigenvalue| of W): "
            f"{_num(float(r['spectral_radius_initial']))} first -> "
            f"{_num(float(r['spectral_radius_final']))} last"
        )
    return "\n".join(lines)


def _ends(values: np.ndarray) -> tuple[int, int] | None:
    """Indices of the first and last snapshot where a spectrum was computed."""
    finite = np.flatnonzero(np.isfinite(values).any(axis=-1))
    return (int(finite[0]), int(finite[-1])) if finite.size else None


def _matrices_drawn(result: xr.Dataset) -> list[str]:
    """The matrices (W, and B unless the run is backprop) stored for at least one layer."""
    layers = map(str, result["layer"].values)
    return [
        str(m) for m in result["matrix"].values if any(_present(result, str(m), v) for v in layers)
    ]


def _styles_note(matrices: list[str]) -> str:
    """How the line styles tell the matrices apart, for a title: "W solid, B dashed"."""
    words = {"-": "solid", "--": "dashed"}
    return ", ".join(f"{m} {words[STYLES[m]]}" for m in matrices)


def _style_handles(matrices: list[str]) -> list[Line2D]:
    """Legend entries that explain the line style of each matrix, in neutral grey."""
    return [Line2D([], [], color="0.3", linestyle=STYLES[m], label=m) for m in matrices]


def _when_handles(ends: set[tuple[int, int]], steps: np.ndarray) -> list[Line2D]:
    """Legend entries for the first and last snapshot, naming their steps when every layer's
    spectra come from the same two snapshots."""
    labels = ["first snapshot", "last snapshot"]
    if len(ends) == 1:
        first, last = next(iter(ends))
        labels = [f"{labels[0]} (step {steps[first]})", f"{labels[1]} (step {steps[last]})"]
    return [
        Line2D([], [], color=color, marker=".", label=label)
        for color, label in zip(("C0", "C3"), labels, strict=True)
    ]


def plot_spectra(result: xr.Dataset, **_: Any) -> Figure:
    """Singular values of each layer's W, and B where stored, at the first and last snapshot."""
    layers = [str(layer) for layer in result["layer"].values]
    matrices = _matrices_drawn(result)
    n_cols = min(4, len(layers))
    n_rows = math.ceil(len(layers) / n_cols)
    fig = Figure(figsize=(3.4 * n_cols + 1.9, 2.9 * n_rows + 0.5), layout="constrained")
    axes = fig.subplots(n_rows, n_cols, squeeze=False).ravel()
    index = result["index"].values
    all_ends: set[tuple[int, int]] = set()
    for ax, layer in zip(axes, layers, strict=False):
        for matrix in matrices:
            if not _present(result, matrix, layer):
                continue
            values = result["singular_value"].sel(matrix=matrix, layer=layer).values
            ends = _ends(values)
            if ends is None:
                continue
            all_ends.add(ends)
            for t, color in zip(ends, ("C0", "C3"), strict=True):
                s = np.where(values[t] > 0, values[t], np.nan)  # zeros have no log
                style = {"marker": ".", "markersize": 3, "linewidth": 1.2}
                ax.plot(index, s, color=color, linestyle=STYLES[matrix], **style)
        present = [m for m in matrices if _present(result, m, layer)]
        shapes = ", ".join(f"{m} {_shape(result, m, layer)}" for m in present)
        ax.set_title(f"{layer} ({shapes})", fontsize=10)
        ax.set_yscale("log")
        ax.set_xlabel("index i (1: largest)")
        ax.set_ylabel("singular value σᵢ")
    for ax in axes[len(layers) :]:
        ax.set_visible(False)
    handles = _when_handles(all_ends, result["snapshot_step"].values) + _style_handles(matrices)
    fig.legend(handles=handles, loc="outside right upper", fontsize="small")
    fig.suptitle(
        f"Singular-value spectra, largest {result.sizes['index']} ({_styles_note(matrices)}) — "
        f"{result.attrs.get('run', '')}"
    )
    return fig


def plot_entropy(result: xr.Dataset, **_: Any) -> Figure:
    """Normalised SVD entropy of each layer's W, and B where stored, over training (1: flat)."""
    fig = Figure(figsize=(7.6, 3.8), layout="constrained")
    ax = fig.add_subplot()
    steps = result["snapshot_step"].values
    layers = [str(v) for v in result["layer"].values]
    matrices = _matrices_drawn(result)
    for layer, color in zip(layers, layer_colors(len(layers)), strict=True):
        for matrix in matrices:
            if not _present(result, matrix, layer):
                continue
            h = result["svd_entropy"].sel(matrix=matrix, layer=layer).values
            finite = np.isfinite(h)
            ax.plot(
                steps[finite],
                h[finite],
                color=color,
                linestyle=STYLES[matrix],
                marker=".",
                label=f"{layer} {matrix}",
            )
    ax.set_xlabel("step")
    ax.set_ylabel("normalised SVD entropy H")
    layer_handles = [
        Line2D([], [], color=c, label=v)
        for v, c in zip(layers, layer_colors(len(layers)), strict=True)
    ]
    fig.legend(
        handles=layer_handles + _style_handles(matrices),
        loc="outside right upper",
        fontsize="small",
    )
    ax.set_title(
        f"SVD entropy over training ({_styles_note(matrices)}) — {result.attrs.get('run', '')}"
    )
    return fig


def plot_spectral_radius(result: xr.Dataset, **_: Any) -> Figure | None:
    """Spectral radius of each recurrent weight W over training; above 1 the recurrence grows.

    None when the run has no recurrent layer.
    """
    recurrent = _recurrent(result)
    if not recurrent:
        return None
    fig = Figure(figsize=(7.6, 3.8), layout="constrained")
    ax = fig.add_subplot()
    steps = result["snapshot_step"].values
    for layer, color in zip(recurrent, layer_colors(len(recurrent)), strict=True):
        rho = result["spectral_radius"].sel(layer=layer).values
        finite = np.isfinite(rho)
        ax.plot(steps[finite], rho[finite], color=color, marker=".", label=layer)
    ax.axhline(1.0, color="0.4", linestyle=":", linewidth=0.9, label="|λ| = 1 (above: grows)")
    ax.set_xlabel("step")
    ax.set_ylabel("spectral radius max |λ(W)|")
    fig.legend(loc="outside right upper", fontsize="small")
    ax.set_title(f"Spectral radius of the recurrent weight W — {result.attrs.get('run', '')}")
    return fig
