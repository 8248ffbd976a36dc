"""Synthetic dynalign runs with planted trajectories, laid out exactly like the recorder's stores.

Analyses are tested on these because their right answer is known by construction (an angle
that decays to a known plateau, an accuracy that drops at a known step), which a real training
run can never promise. The layout follows the store schema v1 (see DESIGN.md, "The store").

    tree = make_run(steps=200, layers=["fc1", "fc2"], update_angle=angles, accuracy=acc,
                    config={"rule.name": "fa", "train.seed": 3})
    path = write_run(tree, tmp_path / "fa_s3.zarr")     # zarr v3, dimension names set
    again = read_run(path)                               # xarray.open_datatree(engine="zarr")

Per-layer series may be given as 1-D (one value per step, shared by every layer) or 2-D
(step, layer). Per-layer series are NaN on steps that were not probed: like the trainer, probes
run on steps 1, 1 + probe_every, 1 + 2 probe_every, ... (``probe_every=0``: never).
Unspecified series get plain constants (angles 0, norms 1, flips 0, zeroed 0, loss 1,
accuracy 0.5), so only what a test plants carries a signal.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
import zarr

from dynalign import schema
from dynalign.config import Config, apply

#: units and long names, from the schema the recorder writes with (first declaration wins:
#: ``step`` of the steps group before the epochs group's)
ATTRS: dict[str, tuple[str, str]] = {}
for _v in (
    schema.STEP,
    *schema.STEP_SCALARS,
    *map(schema.loss_term, ("recon_loss", "sparsity_loss")),
    *schema.LAYER_VARIABLES.values(),
    schema.EPOCH,
    *schema.EPOCH_VARIABLES,
    schema.SNAPSHOT_STEP,
    schema.WEIGHT,
    schema.FEEDBACK,
    schema.SIGN,
    schema.PROBE_INPUT,
    schema.RECONSTRUCTION,
):
    ATTRS.setdefault(_v.name, (_v.units, _v.long_name))

PER_LAYER_DEFAULTS = {
    "update_angle": 0.0,
    "delta_angle": 0.0,
    "feedback_angle": 0.0,
    "weight_norm": 1.0,
    "update_norm": 1.0,
    "sign_flips": 0.0,
    "attempted_flips": 0.0,
    "zeroed_fraction": 0.0,
}


def _attrs(name: str) -> dict[str, str]:
    units, long_name = ATTRS.get(name, ("1", name.replace("_", " ")))
    return {"units": units, "long_name": long_name}


def _per_layer(name: str, values: Any, steps: int, n_layers: int) -> np.ndarray:
    if values is None:
        values = PER_LAYER_DEFAULTS[name]
    arr = np.asarray(values, dtype=float)
    if arr.ndim == 0:
        return np.full((steps, n_layers), float(arr))
    if arr.ndim == 1 and arr.shape[0] == steps:
        return np.repeat(arr[:, None], n_layers, axis=1)
    if arr.shape == (steps, n_layers):
        return arr.copy()
    raise ValueError(
        f"{name} has shape {arr.shape}; give ({steps},) or ({steps}, {n_layers}) values"
    )


def _per_step(name: str, values: Any, steps: int, default: float) -> np.ndarray:
    arr = np.full(steps, default) if values is None else np.asarray(values, dtype=float)
    if arr.ndim == 0:
        arr = np.full(steps, float(arr))
    if arr.shape != (steps,):
        raise ValueError(f"{name} has shape {arr.shape}; give one value per step ({steps},)")
    return arr


def _task(cfg: Config) -> str:
    if cfg.model.kind == "autoencoder":
        return "reconstruction"
    if cfg.data.name == "text":
        return "next_token"
    return "classification"


def make_config(overrides: Mapping[str, Any] | None = None) -> Config:
    """dynalign's default Config with dotted ``overrides`` (validated by dynalign.config)."""
    return apply(Config(), dict(overrides or {}))


def make_run(
    steps: int = 100,
    layers: Sequence[str] = ("fc1", "fc2", "fc3"),
    *,
    update_angle: Any = None,
    delta_angle: Any = None,
    feedback_angle: Any = None,
    accuracy: Any = None,
    loss: Any = None,
    zeroed: Any = None,
    attempted_flips: Any = None,
    sign_flips: Any = None,
    weight_norm: Any = None,
    update_norm: Any = None,
    probe_every: int = 1,
    steps_per_epoch: int = 10,
    train_accuracy: Any = None,
    val_accuracy: Any = None,
    train_loss: Any = None,
    val_loss: Any = None,
    config: Mapping[str, Any] | None = None,
    status: str = "completed",
    task: str | None = None,
    extra_steps: Mapping[str, Any] | None = None,
    snapshots: Mapping[str, Mapping[str, Any]] | None = None,
    reconstructions: Mapping[str, Any] | None = None,
    name: str | None = None,
) -> xr.DataTree:
    """Build an in-memory run DataTree with the given planted series.

    steps: number of optimiser steps (coordinate 1..steps). layers: layer names.
    accuracy/loss: per-step batch series. zeroed: zeroed_fraction. Epoch series
    (train_/val_ accuracy/loss) have one value per epoch, ``ceil(steps / steps_per_epoch)``;
    train ones default to the epoch means of the batch series, val ones to NaN.
    config: dotted overrides of dynalign's default Config (e.g. ``{"rule.name": "bp"}``).
    extra_steps: more (step,) variables, e.g. ``{"recon_loss": ..., "sparsity_loss": ...}``.
    snapshots: ``{layer: {"weight": (S, out, in[, kh, kw]), "snapshot_step": (S,),
    "feedback": optional, "sign": optional (out, in[, kh, kw])}}``.
    reconstructions: ``{"input": (P, pixel), "reconstruction": (S, P, pixel),
    "snapshot_step": (S,), "image_shape": [h, w]}``.
    """
    if steps < 1 or probe_every < 0 or steps_per_epoch < 1:
        raise ValueError("steps and steps_per_epoch must be >= 1, probe_every >= 0")
    cfg = make_config(config)
    layers = [str(layer) for layer in layers]
    step = np.arange(1, steps + 1, dtype=np.int64)
    probed = (step - 1) % probe_every == 0 if probe_every else np.zeros(steps, dtype=bool)
    layer_coord = np.array(layers, dtype=object)  # variable-length strings: a stable zarr v3 type

    task = task or _task(cfg)
    default_acc = 0.5 if task == "classification" else np.nan
    batch_acc = _per_step("accuracy", accuracy, steps, default_acc)
    batch_loss = _per_step("loss", loss, steps, 1.0)
    epoch_of_step = (step - 1) // steps_per_epoch + 1
    n_epochs = int(epoch_of_step[-1])

    data: dict[str, Any] = {
        "epoch": (("step",), epoch_of_step.astype(np.int64)),
        "loss": (("step",), batch_loss.astype(np.float32)),
        "batch_accuracy": (("step",), batch_acc.astype(np.float32)),
        "lr": (("step",), np.full(steps, cfg.train.lr, dtype=np.float32)),
    }
    for key, values in (extra_steps or {}).items():
        data[key] = (("step",), _per_step(key, values, steps, np.nan).astype(np.float32))
    planted = {
        "update_angle": update_angle,
        "delta_angle": delta_angle,
        "feedback_angle": feedback_angle,
        "weight_norm": weight_norm,
        "update_norm": update_norm,
        "sign_flips": sign_flips,
        "attempted_flips": attempted_flips,
        "zeroed_fraction": zeroed,
    }
    for key, values in planted.items():
        arr = _per_layer(key, values, steps, len(layers))
        arr[~probed] = np.nan
        data[key] = (("step", "layer"), arr.astype(np.float32))
    steps_ds = xr.Dataset(data, coords={"step": step, "layer": layer_coord})

    def epoch_series(key: str, values: Any, batch: np.ndarray | None) -> np.ndarray:
        if values is None:
            if batch is None:
                return np.full(n_epochs, np.nan)
            return np.array([batch[epoch_of_step == e].mean() for e in range(1, n_epochs + 1)])
        arr = np.asarray(values, dtype=float)
        if arr.shape != (n_epochs,):
            raise ValueError(f"{key} has shape {arr.shape}; give one value per epoch ({n_epochs},)")
        return arr

    epochs_ds = xr.Dataset(
        {
            "train_loss": (("epoch",), epoch_series("train_loss", train_loss, batch_loss)),
            "train_accuracy": (
                ("epoch",),
                epoch_series("train_accuracy", train_accuracy, batch_acc),
            ),
            "val_loss": (("epoch",), epoch_series("val_loss", val_loss, None)),
            "val_accuracy": (("epoch",), epoch_series("val_accuracy", val_accuracy, None)),
            "step": (("epoch",), np.minimum(np.arange(1, n_epochs + 1) * steps_per_epoch, steps)),
        },
        coords={"epoch": np.arange(1, n_epochs + 1, dtype=np.int64)},
    )
    for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy"):
        epochs_ds[key] = epochs_ds[key].astype(np.float32)

    root = xr.Dataset(
        attrs={
            "schema_version": 1,
            "dynalign_version": "0.1.0",
            "torch_version": "synthetic",
            "created": "2025-01-01T00:00:00+00:00",
            "status": status,
            "config": cfg.to_json(),
            "seed": int(cfg.train.seed),
            "dataset": {
                "name": cfg.data.name,
                "n_train": cfg.data.n_train or 0,
                "n_val": cfg.data.n_val,
                "sha256": "0" * 64,
            },
            "layers": layers,
            "task": task,
            "message": "",
            # written by the recorder beyond the schema: quick facts for `dynalign inspect`
            "rule": cfg.rule.name,
            "model_kind": cfg.model.kind,
            "steps": int(steps),
            "epochs": n_epochs,
            "final": {k: float(epochs_ds[k].values[-1]) for k in epochs_ds.data_vars},
        }
    )
    groups: dict[str, xr.Dataset] = {"/": root, "/steps": steps_ds, "/epochs": epochs_ds}
    for layer, snap in (snapshots or {}).items():
        groups[f"/snapshots/{layer}"] = _snapshot_group(layer, snap)
    if reconstructions is not None:
        groups["/reconstructions"] = _reconstruction_group(reconstructions)
    for ds in groups.values():
        for var in list(ds.variables):
            ds[var].attrs.update(_attrs(str(var)))
    tree = xr.DataTree.from_dict(groups, name=name)
    return tree


def _weight_dims(ndim: int) -> tuple[str, ...]:
    if ndim == 2:
        return ("out", "in")
    if ndim == 4:
        return ("out", "in", "kh", "kw")
    raise ValueError(f"a weight has 2 (out, in) or 4 (out, in, kh, kw) dims, got {ndim}")


def _snapshot_group(layer: str, snap: Mapping[str, Any]) -> xr.Dataset:
    weight = np.asarray(snap["weight"], dtype=np.float32)
    dims = _weight_dims(weight.ndim - 1)
    snap_step = np.asarray(snap["snapshot_step"], dtype=np.int64)
    if snap_step.shape != (weight.shape[0],):
        raise ValueError(f"snapshots[{layer!r}]: snapshot_step needs one entry per snapshot")
    data: dict[str, Any] = {
        "snapshot_step": (("snapshot",), snap_step),
        "weight": (("snapshot", *dims), weight),
    }
    if snap.get("feedback") is not None:
        data["feedback"] = (("snapshot", *dims), np.asarray(snap["feedback"], dtype=np.float32))
    if snap.get("sign") is not None:
        data["sign"] = (dims, np.asarray(snap["sign"], dtype=np.int8))
    return xr.Dataset(data)


def _reconstruction_group(rec: Mapping[str, Any]) -> xr.Dataset:
    ds = xr.Dataset(
        {
            "snapshot_step": (("snapshot",), np.asarray(rec["snapshot_step"], dtype=np.int64)),
            "input": (("probe", "pixel"), np.asarray(rec["input"], dtype=np.float32)),
            "reconstruction": (
                ("snapshot", "probe", "pixel"),
                np.asarray(rec["reconstruction"], dtype=np.float32),
            ),
        }
    )
    ds.attrs["image_shape"] = [int(v) for v in rec["image_shape"]]
    return ds


def write_run(tree: xr.DataTree, path: str | Path) -> Path:
    """Write ``tree`` as a zarr v3 store (dimension names on every array); returns the path."""
    path = Path(path)
    tree.to_zarr(path, mode="w", consolidated=False, zarr_format=3)
    return path


def read_run(path: str | Path) -> xr.DataTree:
    """Open a store the way ``dynalign.open_run`` does (lazily, no consolidated metadata)."""
    return xr.open_datatree(path, engine="zarr", consolidated=False)


# ---------------------------------------------------------------------------- planted curves


def exp_decay(steps: int, start: float, end: float, tau: float) -> np.ndarray:
    """``end + (start - end) * exp(-(step - 1) / tau)`` for steps 1..steps."""
    t = np.arange(steps, dtype=float)
    return end + (start - end) * np.exp(-t / tau)


def rise_then_fall(
    steps: int, peak: float, peak_step: int, onset: int, slope: float, start: float = 0.1
) -> np.ndarray:
    """Accuracy that rises linearly from ``start`` to ``peak`` at ``peak_step``, holds until
    ``onset`` and then falls by ``slope`` per step (floored at 0)."""
    step = np.arange(1, steps + 1, dtype=float)
    rise = start + (peak - start) * np.clip((step - 1) / max(peak_step - 1, 1), 0, 1)
    fall = np.clip(step - onset, 0, None) * slope
    return np.clip(rise - fall, 0.0, 1.0)


def config_json(tree: xr.DataTree) -> dict[str, Any]:
    """The run's config as a nested dict (convenience for tests)."""
    return json.loads(tree.attrs["config"])


def store_arrays(path) -> dict[str, np.ndarray]:
    """Every array of a store but the writer's private checkpoints, by path."""
    found: dict[str, np.ndarray] = {}

    def walk(group: zarr.Group, where: str) -> None:
        for name, array in group.arrays():
            found[where + name] = array[...]
        for name, child in group.groups():
            if not (where == "" and name == "checkpoint"):
                walk(child, f"{where}{name}/")

    walk(zarr.open_group(str(path), mode="r"), "")
    return found
