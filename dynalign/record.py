"""``record(config, out)``: one run from configuration to a finished store.

Everything that can be checked is checked before the store is created (data, model, device,
output path), so a bad run leaves nothing behind; once the store exists it always ends with a
status, whatever stops the run: completion, divergence, Ctrl-C, SIGTERM or an error.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from pathlib import Path

import numpy as np
import torch

from . import __version__
from .config import Config, ConfigError
from .constraints import make_constraint
from .data import load
from .feedback import feedback_layers
from .models import build
from .probes import probe_variables
from .rules import attach_rule, make_rule
from .store import RunWriter, StoreError
from .trainer import RunResult, Trainer, seed_everything


def check_device(device: str) -> None:
    if device == "cpu":
        return
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"train.device={device!r} but no CUDA device is available; use cpu")
        return
    raise ConfigError(f"train.device={device!r} is not supported; use cpu or cuda")


def prepare(config: Config):
    """Data, model (with its rule and constraint) for a config, on the configured device."""
    check_device(config.train.device)
    if config.train.threads:  # on a shared machine, fewer threads than cores avoid contention
        torch.set_num_threads(config.train.threads)
    data = load(config.data, config.train.seed)
    seed_everything(config.train.seed)
    init = torch.Generator().manual_seed(config.train.seed + 1)
    model = build(config, data.input_shape, data.n_classes, init)
    rule = make_rule(config.rule.name, config.rule.distribution, config.rule.scale)
    attach_rule(model, rule, init)
    model.to(config.train.device)
    constraint = make_constraint(config.constraint, model, init)
    return data, model, constraint


@contextlib.contextmanager
def stop_on_signals(trainer: Trainer):
    """SIGINT/SIGTERM ask the trainer to stop after the current step (status ``interrupted``).

    Stopping between steps, never inside one, keeps the store consistent: no half-written row
    or chunk. A second signal interrupts at once, for a run that will not stop.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        if trainer.stop_requested:
            raise KeyboardInterrupt
        trainer.stop_requested = signal.Signals(signum).name

    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, previous in old.items():
            signal.signal(sig, previous)


def record(
    config: Config, out: str | Path, overwrite: bool = False, progress: bool = True
) -> RunResult:
    """Train as ``config`` says and write the whole trajectory to the store at ``out``."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise StoreError(f"{out} already exists; choose another --out or pass --overwrite")
    data, model, constraint = prepare(config)
    layers = feedback_layers(model)
    has_feedback = any(layer.feedback is not None for layer in layers.values())
    autoencoder = hasattr(model, "reconstruct")
    attrs = {
        "dynalign_version": __version__,
        "torch_version": torch.__version__,
        "config": config.to_json(),
        "seed": config.train.seed,
        "dataset": data.attrs(),
        # an autoencoder reconstructs whatever data it is given (digits too)
        "task": "reconstruction" if autoencoder else data.task,
        "rule": config.rule.name,
        "model_kind": config.model.kind,
    }
    image_shape = None
    if autoencoder:  # how to show one sample as a picture: (h, w), or (c, h, w) for colour
        shape = tuple(data.input_shape)
        image_shape = shape[1:] if len(shape) == 3 and shape[0] == 1 else shape
    n_probe = min(config.probes.n_probe_inputs, len(data.x_val))
    writer = RunWriter(
        out,
        attrs,
        {n: tuple(layer.weight.shape) for n, layer in layers.items()},
        has_feedback,
        tuple(getattr(model, "loss_term_names", ())),
        probe_variables(),
        image_shape=image_shape,
        n_probe=n_probe,
        overwrite=overwrite,
    )
    _write_static(writer, model, constraint, data, n_probe, autoencoder)
    trainer = Trainer(config, data, model, writer, constraint, progress)
    try:
        with stop_on_signals(trainer):
            result = trainer.run()
    except BaseException as err:
        writer.close("failed", f"{type(err).__name__}: {err}")
        raise
    final = {k: float(v) for k, v in result.final.items()}
    writer.close(
        result.status, result.message, steps=result.steps, epochs=result.epochs, final=final
    )
    return result


def _write_static(writer: RunWriter, model, constraint, data, n_probe: int, autoencoder: bool):
    """Arrays fixed for the whole run: probe inputs, Dale's-law signs, Mixed-ReLU unit signs."""
    if autoencoder:
        x = data.x_val[:n_probe].reshape(n_probe, -1).numpy().astype(np.float32)
        writer.write_static(
            "reconstructions",
            "input",
            x,
            ("probe", "pixel"),
            "1",
            "probe inputs (first validation samples)",
        )
    if constraint is not None:
        for name, sign in constraint.signs.items():
            dims = ("out", "in", "kh", "kw")[: sign.dim()]
            writer.write_static(
                f"snapshots/{name}",
                "sign",
                sign.cpu().numpy().astype(np.int8),
                dims,
                "1",
                "fixed sign of each weight (Dale's law)",
            )
    for name, module in model.named_modules():
        sign = getattr(module, "sign", None)
        if isinstance(sign, torch.Tensor) and module is not model and sign.dim() == 1:
            writer.write_static(
                "units",
                name,
                sign.cpu().numpy().astype(np.int8),
                (f"{name}_unit",),
                "1",
                "fixed sign of each Mixed-ReLU unit",
            )
