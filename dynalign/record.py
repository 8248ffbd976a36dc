"""``record(config, out)``: one run from configuration to a finished store; ``resume(out)``
continues one that was stopped, failed or killed, from its last checkpoint.

Everything that can be checked is checked before the store is created (data, model, device,
output path), so a bad run leaves nothing behind; once the store exists it always ends with a
status, whatever stops the run: completion, divergence, Ctrl-C, SIGTERM or an error. Signals
are taken over before the store exists, so no moment is left where Ctrl-C skips the status.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from pathlib import Path

import numpy as np
import torch
import zarr

from . import __version__, checkpoint
from .config import Config, ConfigError, from_json
from .constraints import make_constraint
from .data import load
from .feedback import feedback_layers
from .models import build
from .probes import probe_variables
from .rules import make_rule
from .schema import PROBE_INPUT, SCHEMA_VERSION, SIGN, UNIT_SIGN
from .store import RunWriter, StoreError, dynalign_attrs
from .trainer import RunResult, Trainer, seed_everything
from .writer_lock import describe_writer, writer_alive


def check_device(device: str) -> None:
    if device == "cpu":
        return
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"train.device={device!r} but no CUDA device is available; use cpu")
        return
    raise ConfigError(f"train.device={device!r} is not supported; use cpu or cuda")


def prepare(config: Config):
    """Data, model, sign constraint (or None) and rule for a config, on the configured device."""
    check_device(config.train.device)
    if config.train.threads:  # None: torch's default, all cores (configs of older stores)
        torch.set_num_threads(config.train.threads)
    data = load(config.data, config.train.seed)
    seed_everything(config.train.seed)
    init = torch.Generator().manual_seed(config.train.seed + 1)
    model = build(config, data.input_shape, data.n_classes, init)
    rule = make_rule(config)
    rule.attach(model, init, data.input_shape)
    model.to(config.train.device)
    constraint = make_constraint(config.constraint, model, init)
    rule.refresh(feedback_layers(model))  # B that follows W sees the constrained signs
    return data, model, constraint, rule


class _Signals:
    """SIGINT/SIGTERM ask the trainer to stop after the current step (status ``interrupted``).

    Stopping between steps, never inside one, keeps the store consistent and lets the run
    checkpoint where it stopped. A second signal interrupts at once, for a run that will not
    stop; once the store is being closed, signals are ignored: closing takes a moment, and it
    is what makes the status true.
    """

    def __init__(self, trainer: Trainer):
        self.trainer, self.closing = trainer, False

    def __call__(self, signum, frame) -> None:
        if self.closing:
            return
        # only while a step computes (``Trainer.interruptible``), and only once: anywhere else
        # (creating the store, flushing rows, a checkpoint) it would break what is being written
        if self.trainer.stop_requested and self.trainer.interruptible:
            self.trainer.interruptible = False
            raise KeyboardInterrupt
        self.trainer.stop_requested = signal.Signals(signum).name


@contextlib.contextmanager
def stop_on_signals(trainer: Trainer):
    handler = _Signals(trainer)
    if threading.current_thread() is not threading.main_thread():
        yield handler
        return
    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield handler
    finally:
        for sig, previous in old.items():
            signal.signal(sig, previous)


def record(
    config: Config, out: str | Path, overwrite: bool = False, progress: bool = True
) -> RunResult:
    """Train as ``config`` says and write the whole trajectory to the store at ``out``."""
    out = Path(out)
    if (out.exists() or out.is_symlink()) and not overwrite:
        raise StoreError(f"{out} already exists; choose another --out or pass --overwrite")
    data, model, constraint, rule = prepare(config)
    if not out.parent.is_dir():  # only once the run is known to be valid
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise StoreError(
                f"cannot create the folder for {out}: {err.strerror}; choose another --out"
            ) from None
    layers = feedback_layers(model)
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
    trainer = Trainer(config, data, model, rule, None, constraint, progress)
    with stop_on_signals(trainer) as signals:
        writer = RunWriter(
            out,
            attrs,
            {n: tuple(layer.weight.shape) for n, layer in layers.items()},
            {
                n: tuple(layer.feedback.shape)
                for n, layer in layers.items()
                if layer.feedback is not None
            },
            tuple(getattr(model, "loss_term_names", ())),
            probe_variables(),
            image_shape=image_shape,
            n_probe=n_probe,
            snapshot_dtype=config.probes.snapshot_dtype,
            feedback_fixed=rule.feedback_is_fixed(),
            overwrite=overwrite,
        )

        def write_static():
            _write_static(writer, model, constraint, data, n_probe, autoencoder)

        return _train(writer, trainer, signals, write_static, f"recording {_what(config)} into")


def resume(out: str | Path, progress: bool = True) -> RunResult:
    """Continue the run in the store at ``out`` from its last checkpoint (from the start if it
    has none): the finished store equals, array for array, the one an unbroken run writes."""
    out = Path(out)
    if not out.exists():
        raise StoreError(f"{out} does not exist; give the store of a run to resume")
    if out.is_dir() and not any(out.iterdir()):
        raise StoreError(
            f"{out} is empty: its run was stopped before it wrote anything, so there is nothing "
            "to resume; record it again (with --overwrite)"
        )
    attrs = dynalign_attrs(out)
    if writer_alive(out):
        raise StoreError(
            f"{out} is being written by {describe_writer(attrs.get('writer'))}: the run is still "
            "going; wait for it to end (or stop it) before resuming it"
        )
    status = attrs.get("status")
    if attrs.get("schema_version") != SCHEMA_VERSION:
        raise StoreError(
            f"{out} has schema version {attrs.get('schema_version')}, written by an earlier "
            f"dynalign ({attrs.get('dynalign_version')}); this one resumes version "
            f"{SCHEMA_VERSION} only: record it again"
        )
    if status == "completed":
        raise StoreError(
            f"{out} is a completed run, so there is nothing to resume; record a new run into "
            "another --out"
        )
    if status == "diverged":
        raise StoreError(
            f"{out} diverged ({attrs.get('message', '')}); resuming would diverge again: record "
            "a new run with a lower train.lr or with train.grad_clip"
        )
    try:
        config = from_json(attrs["config"])
    except (KeyError, ValueError) as err:
        raise StoreError(f"{out} holds no usable config ({err}); record the run again") from None
    from .reader import check_store  # imports xarray: only a resumed run needs it

    problems = check_store(out)
    if problems:
        raise StoreError(
            f"{out} is damaged ({problems[0]}; {len(problems)} problem(s) in all, "
            "`dynalign inspect --check` lists them), so it cannot be continued; record it again"
        )
    saved = checkpoint.load(zarr.open_group(str(out), mode="r"))
    if saved is None:  # killed before its first checkpoint (maybe before all arrays existed)
        return record(config, out, overwrite=True, progress=progress)
    data, model, constraint, rule = prepare(config)
    if data.attrs().get("sha256") != (attrs.get("dataset") or {}).get("sha256"):
        raise StoreError(
            f"the data of {out} ({config.data.name}) changed since the run began, so it cannot be "
            "continued; record it again, or restore the original data files"
        )
    trainer = Trainer(config, data, model, rule, None, constraint, progress)
    arrays, counters = saved
    committed = counters["committed"]
    trainer.restore(arrays, counters)
    with stop_on_signals(trainer) as signals:
        writer = RunWriter.reopen(out, committed)
        what = f"resuming {_what(config)} after step {trainer.step} in"
        return _train(writer, trainer, signals, lambda: None, what)


def _what(config: Config) -> str:
    return f"{config.rule.name} on {config.data.name}"


def _train(
    writer: RunWriter, trainer: Trainer, signals: _Signals, write_static, what: str
) -> RunResult:
    """Run the trainer into ``writer`` and close the store with the status the run ended in.

    With progress on, a line on stderr first says ``what`` goes into which store: once the
    store is there, so that a run refused before it (nothing written) shows only its error.
    """
    trainer.writer = writer
    if trainer.progress:
        epochs = trainer.config.train.epochs
        length = f"{epochs} epoch{'s' * (epochs != 1)}, {trainer.total_steps} steps"
        print(f"{what} {writer.path} ({length})", file=sys.stderr, flush=True)
    try:
        write_static()
        writer.commit()  # the list of arrays, for checks, from the first moment on
        if trainer.stop_requested:
            cause = trainer.stop_requested
            result = RunResult("interrupted", f"stopped by {cause} before the first step", 0, 0, {})
        else:
            result = trainer.run()
    except BaseException as err:
        signals.closing = True
        message = f"{type(err).__name__}: {err}"
        if isinstance(err, OSError):
            message = (
                f"writing {writer.path} failed ({err.strerror or err}); the store keeps every "
                "step up to its last commit: free disk space and `dynalign record --resume` it"
            )
        writer.close("failed", message)
        if isinstance(err, OSError):
            raise StoreError(message) from None
        raise
    signals.closing = True
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
            PROBE_INPUT,
        )
    if constraint is not None:
        for name, sign in constraint.signs.items():
            dims = ("out", "in", "kh", "kw")[: sign.dim()]
            writer.write_static(
                f"snapshots/{name}",
                "sign",
                sign.cpu().numpy().astype(np.int8),
                dims,
                SIGN,
            )
    for name, module in model.named_modules():
        sign = getattr(module, "sign", None)
        if isinstance(sign, torch.Tensor) and module is not model and sign.dim() == 1:
            writer.write_static(
                "units",
                name,
                sign.cpu().numpy().astype(np.int8),
                (f"{name}_unit",),
                UNIT_SIGN,
            )
