"""The training loop: minibatch SGD (or Adam) under a learning rule, with probes and recording.

Each step: forward, loss, backward under the rule (and, where a due probe needs it, the BP
reference pass of ``dynalign.reference``), optimiser step, sign constraint, the rule's own
update of B, and the recorder's row. The trainer never names a rule or a probe: the rule
object and the recorder decide what each step does beyond plain training.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, replace

import numpy as np
import torch

from . import checkpoint, reference
from .allocator import keep_freed_memory
from .config import Config
from .constraints import SignConstraint
from .data import Dataset
from .feedback import CurrentFeedback, FeedbackLayer, feedback_layers
from .measured_step import measured_step
from .models import Network
from .probes import StepContext
from .recorder import CAPTURE, Recorder
from .renewal import renew, split_owed
from .rules import Rule
from .store import RunWriter
from .weight_step import host_floats


class StopRequested(Exception):
    """A signal asked the run to stop; raised between two steps, so the state is whole."""


class Diverged(Exception):
    """The loss stopped being finite; ``row`` is the step's record (loss included)."""

    def __init__(self, message: str, row: dict | None = None):
        super().__init__(message)
        self.row = row


@dataclass
class RunResult:
    status: str
    message: str
    steps: int
    epochs: int
    final: dict[str, float]


#: an epoch's end commits only this long after the last commit (a commit fsyncs every file)
EPOCH_COMMIT_SECONDS = 1.0


def make_optimizer(config: Config, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    t = config.train
    if t.optimizer == "adam":
        return torch.optim.Adam(params, lr=t.lr, weight_decay=t.weight_decay)
    return torch.optim.SGD(params, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)


class Trainer:
    def __init__(
        self,
        config: Config,
        data: Dataset,
        model: Network,
        rule: Rule,
        writer: RunWriter | None,
        constraint: SignConstraint | None = None,
        progress: bool = True,
    ):
        self.config, self.data, self.model, self.rule = config, data, model, rule
        self.constraint = constraint
        keep_freed_memory()  # a step's large tensors reuse the last step's memory
        self.device = torch.device(config.train.device)
        self.layers = feedback_layers(model)
        self.names = list(self.layers)
        self.optimizer = make_optimizer(config, rule.trainable(model))
        self.params = list(model.parameters())
        probe_inputs = None
        if hasattr(model, "reconstruct"):
            probe_inputs = data.x_val[: config.probes.n_probe_inputs].to(self.device)
        self.recorder = Recorder(
            config,
            model,
            self.layers,
            probe_inputs,
            self.total_steps,
            feedback_fixed=rule.feedback_is_fixed(),
        )
        self.writer = writer
        self.progress = progress
        self.step = 0
        self.epoch = 0
        self.batch = 0  # minibatches of the current epoch done
        self.order: torch.Tensor | None = None  # the current epoch's sample order
        self.final: dict[str, float] = {}  # the last epoch's metrics
        self._resumed = False
        self._last_checkpoint = time.monotonic()
        self._before: list[torch.Tensor] | None = None
        self.stop_requested: str | None = None  # set by a signal handler: stop after this step
        # true only while a step computes: a second signal may cut that short, never a write
        # to the store (a half-done flush would lose rows it had already taken)
        self.interruptible = False
        self.shuffle = torch.Generator().manual_seed(config.train.seed + 2)

    @property
    def writer(self) -> RunWriter | None:
        return self.recorder.writer

    @writer.setter
    def writer(self, writer: RunWriter | None) -> None:
        self.recorder.writer = writer

    # -- one step -----------------------------------------------------------------------------
    def train_batch(self, x: torch.Tensor, y: torch.Tensor) -> dict:
        """One optimiser step on a minibatch, recorded (and snapshotted when due)."""
        self.step += 1
        self.interruptible = True
        try:
            row, ctx = self._train_step(x, y)
        finally:
            self.interruptible = False
        return self.recorder.record(row, ctx)

    def _train_step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[dict, StepContext]:
        needs = self.recorder.needs(self.step)
        layers = list(self.layers.values())
        capture = bool(needs & CAPTURE)
        if capture:
            reference.start_capture(layers)
        out = self.model(x)
        terms = self.model.loss_terms(out, x, y)
        loss = terms["loss"]
        scalars, scored = self.recorder.scalars.tensors(self.model, out, y, terms)
        loss_value, *scalar_values = host_floats(loss.detach(), *scalars)
        row = {
            "step": self.step,
            "epoch": self.epoch,
            "loss": loss_value,
            "lr": self.optimizer.param_groups[0]["lr"],
        }
        if not math.isfinite(loss_value):
            if capture:
                reference.stop_capture(layers)
            raise Diverged(
                f"loss became {loss_value} at step {self.step} (epoch {self.epoch})", row
            )
        row.update(self.recorder.scalars.values(scalar_values, scored))

        gradients = None
        if capture:  # sets every parameter's .grad: no zero_grad needed (cold, it took 170 µs)
            gradients = reference.backward(loss, self.params, layers, "reference" in needs)
        else:
            for p in self.params:  # zero_grad(set_to_none=True), less its wrappers' 0.1 ms
                p.grad = None
            loss.backward()
        weights = [layer.weight for layer in layers]
        if self.config.train.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.params, self.config.train.grad_clip)
        before = measured = None
        renewals = self.rule.renewals(self.layers, self.optimizer)
        if self.constraint is None:
            # one pass writes W (and a renewed B) and, on a probe step, measures it; a
            # constraint changes W after the step
            measure = "weights_before" in needs  # B only where the pass measures it
            now, owed = split_owed(renewals, layers, measure)
            measured = measured_step(
                self.optimizer,
                weights,
                self._fixed_feedback(layers) if measure else [None] * len(weights),
                now,
                measure=measure,
            )
            if measured is not None:  # else every B is renewed below
                for layer, renewal in zip(layers, owed, strict=False):
                    if renewal is not None:
                        layer.defer_renewal(renewal)
        if measured is None:
            before = self._copy_weights(weights) if "weights_before" in needs else None
            self.optimizer.step()
        counts = None
        if self.constraint is not None:
            counts = self.constraint.project(self.optimizer)
        if renewals is None:
            self.rule.after_step(self.layers, self.optimizer)
        elif measured is None:
            renew(renewals, weights)
        if "weights_before" not in needs:
            measured = None  # stepped, not measured: no probe reads it on this step
        elif measured is not None and self.config.train.grad_clip:
            # the pass summed the clipped gradient; the update angle's Gram form wants δᵀx's
            measured = [replace(m, gradient_sq=None) for m in measured]

        ctx = StepContext(
            step=self.step,
            names=self.names,
            weights=[w.detach() for w in weights],
            feedback=CurrentFeedback(layers),  # read when a probe reads it
            routed=[layer.route is not None for layer in layers],
            gradients=gradients,
            weights_before=before,
            measured=measured,
            constraint_counts=None if counts is None else [counts[n] for n in self.names],
        )
        return row, ctx

    def _fixed_feedback(self, layers: list[FeedbackLayer]) -> list[torch.Tensor | None]:
        """Each layer's B where the optimiser's pass can measure it: W's shape, and a rule that
        does not renew it after the step (the probes measure a renewed B afterwards)."""
        fixed = self.rule.feedback_is_fixed()
        return [
            layer.feedback if fixed and layer.has_weight_shaped_feedback() else None
            for layer in layers
        ]

    def _copy_weights(self, weights: list[torch.Tensor]) -> list[torch.Tensor]:
        """W before the optimiser step, in buffers kept across steps (no fresh allocation)."""
        if self._before is None:
            self._before = [torch.empty_like(w) for w in weights]
        for buf, w in zip(self._before, weights, strict=True):
            buf.copy_(w.detach())
        return self._before

    # -- evaluation ----------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, x: torch.Tensor, y: torch.Tensor, batch: int = 1000) -> tuple[float, float]:
        """Mean loss and accuracy over a whole split, in evaluation mode."""
        self.model.eval()
        total, n, correct, scored = 0.0, 0, 0, 0
        for i in range(0, len(x), batch):
            xb, yb = x[i : i + batch].to(self.device), y[i : i + batch].to(self.device)
            out = self.model(xb)
            total += float(self.model.loss_terms(out, xb, yb)["loss"]) * len(xb)
            n += len(xb)
            c, s = self.model.correct(out, yb)
            correct, scored = correct + c, scored + s
        self.model.train()
        return total / max(n, 1), (correct / scored if scored else math.nan)

    # -- checkpoints ---------------------------------------------------------------------------
    def checkpoint(self, epoch_done: bool, last: bool = False) -> None:
        """Commit every row so far together with the state the next step needs, written on
        the store's background thread (``last``: the run stops after it, so it waits for a
        snapshot still being written and for its own writing)."""
        if self.writer is None:
            return
        arrays = checkpoint.capture(self.model, self.optimizer, self._generators(), self.order)
        # a snapshot of this very step still being written is left out, not waited for: a
        # resumed run takes it again (see ``run``)
        in_flight = self.writer.snapshot_in_flight(None if last else self.step)
        counters = {
            "step": self.step,
            "epoch": self.epoch,
            "batch": self.batch,
            "epoch_done": epoch_done,
            **self.recorder.progress(snapshot_in_flight=in_flight),
            "final": self.final,
        }
        fixed = frozenset()
        if self.rule.feedback_is_fixed():
            fixed = frozenset(f"model.{name}.feedback" for name in self.names)
        checkpoint.save(self.writer, arrays, counters, in_flight, fixed, wait=last)
        self._last_checkpoint = time.monotonic()

    def _checkpoint_due(self) -> bool:
        """At an epoch's end (checkpoint_every unset): once checkpoint_seconds have passed.

        A checkpoint costs a few hundred ms of writing and fsync; short epochs (13 steps of the
        embedded digits) would spend most of a run on them, and a kill loses at most this long.
        """
        seconds = self.config.probes.checkpoint_seconds
        return seconds == 0 or time.monotonic() - self._last_checkpoint >= seconds

    def restore(self, arrays: dict[str, np.ndarray], counters: dict) -> None:
        """Continue from a checkpoint (see ``checkpoint``): the next step is the one it saw."""
        order = checkpoint.restore(self.model, self.optimizer, self._generators(), arrays)
        self.order = order.to(self.device) if order is not None else None
        self.step = counters["step"]
        self.recorder.restore(counters)
        self.epoch, self.batch = counters["epoch"], counters["batch"]
        self.final = dict(counters["final"])
        if counters["epoch_done"]:
            self.epoch, self.batch, self.order = self.epoch + 1, 0, None
        self._resumed = True

    def _generators(self) -> dict[str, torch.Generator]:
        """Every generator training draws from (the epoch order's, the rule's)."""
        return {
            "shuffle": self.shuffle,
            **{f"rule.{k}": g for k, g in self.rule.generators().items()},
        }

    def keep_safe(self) -> None:
        """After a step: a checkpoint when one is due, else a commit when one is due; this
        bounds what a hard kill can lose."""
        every = self.config.probes.checkpoint_every
        if every and self.step % every == 0:
            self.checkpoint(epoch_done=False)
        elif self.writer is not None:
            self.writer.commit_if_due()

    # -- the loop ------------------------------------------------------------------------------
    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.data.x_train) / self.config.train.batch_size)

    @property
    def total_steps(self) -> int:
        return self.config.train.epochs * self.steps_per_epoch

    def run(self) -> RunResult:
        cfg = self.config.train
        x_train, y_train = self.data.x_train.to(self.device), self.data.y_train.to(self.device)
        n = len(x_train)
        steps_per_epoch, total = self.steps_per_epoch, self.total_steps
        progress = Progress(total, cfg.epochs, self.progress, done=self.step)
        status, message = "completed", ""
        self.model.train()
        if not self._resumed:
            self.epoch = 1
        # the first snapshot, or one the checkpoint resumed from left out (in flight then)
        self.recorder.take_snapshots(self.step)
        per_epoch = self.config.probes.checkpoint_every is None
        try:
            while self.epoch <= cfg.epochs:
                if self.order is None:
                    self.order = torch.randperm(n, generator=self.shuffle).to(self.device)
                while self.batch < steps_per_epoch:
                    start = self.batch * cfg.batch_size
                    idx = self.order[start : start + cfg.batch_size]
                    row = self.train_batch(x_train[idx], y_train[idx])
                    self.batch += 1
                    progress.step(row, last=self.step == total)
                    self.keep_safe()
                    if self.stop_requested:
                        raise StopRequested
                progress.epoch(self._end_epoch())
                if per_epoch and self._checkpoint_due():
                    self.checkpoint(epoch_done=True)
                elif self.writer is not None:  # readers see each epoch within a second, but
                    # short epochs do not each pay a commit's fsync of every file written
                    self.writer.commit_if_due(EPOCH_COMMIT_SECONDS)
                self.epoch, self.batch, self.order = self.epoch + 1, 0, None
        except Diverged as err:
            if err.row is not None:
                self.recorder.append(err.row)
            status, message = "diverged", f"{err}; lower train.lr or set train.grad_clip"
        except StopRequested:  # between two steps: the state is whole, keep it
            status = "interrupted"
            message = f"stopped by {self.stop_requested} after step {self.step}"
            self.checkpoint(epoch_done=False, last=True)
        except KeyboardInterrupt:  # inside a step: the last checkpoint stands
            cause = self.stop_requested or "KeyboardInterrupt"
            status, message = "interrupted", f"stopped by {cause} during step {self.step}"
        finally:
            progress.close()
            if status != "interrupted":
                self.recorder.take_snapshots(self.step, final=True)
        done = int(self.final.get("epoch", 0))
        return RunResult(status, message, self.step, done, dict(self.final))

    def _end_epoch(self) -> dict[str, float]:
        train_loss, train_acc = self.evaluate(self.data.x_train, self.data.y_train)
        val_loss, val_acc = self.evaluate(self.data.x_val, self.data.y_val)
        row = {
            "epoch": self.epoch,
            "train_loss": train_loss,
            "train_accuracy": train_acc,
            "val_loss": val_loss,
            "val_accuracy": val_acc,
            "step": self.step,
        }
        if self.writer is not None:
            self.writer.append_epoch(row)
        self.final = row
        if not math.isfinite(train_loss):
            raise Diverged(f"training loss became {train_loss} at epoch {self.epoch}")
        return row


class Progress:
    """What a run shows on stderr while it trains: on a terminal a bar, which stays at the end;
    elsewhere (a log file, a pipe, CI) one line per epoch, since a bar would draw nothing."""

    def __init__(self, total: int, epochs: int, enabled: bool = True, done: int = 0):
        self.epochs, self.start = epochs, time.monotonic()
        terminal = sys.stderr.isatty()
        self.lines = enabled and not terminal
        self.bar = _bar(total, done) if enabled and terminal else None
        self.shown: dict[str, str] = {}  # the bar's postfix

    def step(self, row: dict, last: bool = False) -> None:
        if self.bar is None:
            return
        self.bar.update(1)
        if row["step"] % 20 == 1 or last:
            self.shown.update(loss=f"{row['loss']:.4f}", acc=f"{row['batch_accuracy']:.3f}")
            self.bar.set_postfix(self.shown, refresh=False)

    def epoch(self, row: dict) -> None:
        if self.lines:
            elapsed = time.monotonic() - self.start
            print(epoch_line(row, self.epochs, elapsed), file=sys.stderr, flush=True)
        elif self.bar is not None and not math.isnan(row["val_accuracy"]):
            self.shown["val_acc"] = f"{row['val_accuracy']:.3f}"
            self.bar.set_postfix(self.shown, refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def epoch_line(row: dict, epochs: int, elapsed: float) -> str:
    """``epoch 3/30: train loss 0.1234 acc 0.9650, val loss 0.2345 acc 0.9420, 12.3 s``
    (an accuracy is left out where the task has none)."""
    parts = []
    for split in ("train", "val"):
        part = f"{split} loss {row[f'{split}_loss']:.4f}"
        accuracy = row[f"{split}_accuracy"]
        parts.append(part if math.isnan(accuracy) else f"{part} acc {accuracy:.4f}")
    return f"epoch {row['epoch']}/{epochs}: {', '.join(parts)}, {elapsed:.1f} s"


def _bar(total: int, done: int):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=done, unit="step", dynamic_ncols=True, leave=True)


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
