"""The training loop: minibatch SGD (or Adam) under a learning rule, with probes and recording.

On a probe step one forward pass is differentiated twice: once under the rule (the update the
optimiser applies) and once inside ``exact_gradients()`` (the true gradient), so the two are
compared on exactly the same graph. Other steps do a single ordinary backward pass.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from . import checkpoint
from .config import Config
from .constraints import SignConstraint
from .data import Dataset
from .feedback import exact_gradients, feedback_layers
from .models import Network
from .probes import StepContext, gram_is_cheaper, run_probes
from .store import RunWriter


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


def make_optimizer(config: Config, model: torch.nn.Module) -> torch.optim.Optimizer:
    t = config.train
    if t.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    return torch.optim.SGD(
        model.parameters(), lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay
    )


class Trainer:
    def __init__(
        self,
        config: Config,
        data: Dataset,
        model: Network,
        writer: RunWriter | None,
        constraint: SignConstraint | None = None,
        progress: bool = True,
    ):
        self.config, self.data, self.model, self.writer = config, data, model, writer
        self.constraint = constraint
        self.device = torch.device(config.train.device)
        self.layers = feedback_layers(model)
        self.names = list(self.layers)
        self.optimizer = make_optimizer(config, model)
        self.params = list(model.parameters())
        self.progress = progress
        self.step = 0
        self.epoch = 0
        self.last_snapshot = -1
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
        self.extra_terms = tuple(getattr(model, "loss_term_names", ()))
        n_probe = config.probes.n_probe_inputs
        self.probe_inputs = (
            data.x_val[:n_probe].to(self.device) if hasattr(model, "reconstruct") else None
        )

    # -- recording helpers -------------------------------------------------------------------
    def _snapshot(self) -> None:
        if self.writer is None:
            return
        self.last_snapshot = self.step
        layers = self.layers.items()
        weights = {n: layer.weight.detach().cpu().numpy() for n, layer in layers}
        feedback = None
        if any(layer.feedback is not None for _, layer in layers):
            feedback = {n: layer.feedback.cpu().numpy() for n, layer in layers}
        self.writer.snapshot(self.step, weights, feedback)
        if self.probe_inputs is not None:
            rec = self.model.reconstruct(self.probe_inputs)
            self.writer.reconstruction(self.step, rec.reshape(len(rec), -1).cpu().numpy())

    def _due(self, every: int) -> bool:
        return every > 0 and (self.step - 1) % every == 0

    # -- one step -----------------------------------------------------------------------------
    def train_batch(self, x: torch.Tensor, y: torch.Tensor) -> dict:
        """One optimiser step on a minibatch, recorded (and snapshotted when due)."""
        self.step += 1
        self.interruptible = True
        try:
            row = self._train_step(x, y)
        finally:
            self.interruptible = False
        if self.writer is not None:
            self.writer.append_step(row)
            if self._due_snapshot(self.step):
                self._snapshot()
        return row

    def _train_step(self, x: torch.Tensor, y: torch.Tensor) -> dict:
        probe = self.writer is not None and self._due(self.config.probes.every)
        layers = list(self.layers.values())
        if probe:
            for layer in layers:
                layer.capturing = True
        out = self.model(x)
        terms = self.model.loss_terms(out, x, y)
        loss = terms["loss"]
        loss_value = float(loss.detach())
        row = {
            "step": self.step,
            "epoch": self.epoch,
            "loss": loss_value,
            "lr": self.optimizer.param_groups[0]["lr"],
        }
        if not math.isfinite(loss_value):
            for layer in layers:
                layer.release_captured()
            raise Diverged(
                f"loss became {loss_value} at step {self.step} (epoch {self.epoch})", row
            )

        self.optimizer.zero_grad(set_to_none=True)
        ctx = self._rule_and_exact_gradients(loss, layers) if probe else None
        if ctx is None:
            loss.backward()

        if self.config.train.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.params, self.config.train.grad_clip)
        self.optimizer.step()
        if self.constraint is not None:
            attempted = self.constraint.project()
            if ctx is not None:
                ctx.attempted = [attempted[n] for n in self.names]

        correct, scored = self.model.correct(out.detach(), y)
        row["batch_accuracy"] = correct / scored if scored else math.nan
        for term in self.extra_terms:
            row[term] = float(terms[term].detach())
        if ctx is not None:
            row.update(run_probes(ctx))
        return row

    def _rule_and_exact_gradients(self, loss: torch.Tensor, layers: list) -> StepContext:
        """Differentiate one graph under the rule (stored as .grad) and under BP (for probes).

        The BP pass asks autograd for the error at every layer's output; the true weight
        gradient of a Linear layer is not formed where its Gram form is cheaper (see
        ``probes.gram_is_cheaper``): the probe needs only its inner products.
        """
        captured = [layer.release_captured() for layer in layers]
        counts = [len(outs) for outs, _ in captured]
        outs = [t for layer_outs, _ in captured for t in layer_outs]
        inputs = [_rows(ins) if ins else None for _, ins in captured]
        weights = [layer.weight for layer in layers]
        n = len(self.params)
        rule = torch.autograd.grad(loss, self.params + outs, retain_graph=True, allow_unused=True)
        for p, g in zip(self.params, rule[:n], strict=True):
            p.grad = g
        rule_grads = [p.grad for p in weights]
        rule_deltas = _per_layer(rule[n:], counts)
        if any(layer.feedback is not None for layer in layers):
            gram = [
                x is not None and gram_is_cheaper(x, d)
                for x, d in zip(inputs, rule_deltas, strict=True)
            ]
            wanted = [w for w, g in zip(weights, gram, strict=True) if not g]
            for layer, g in zip(layers, gram, strict=True):
                layer.exact_weight_grad = not g
            try:
                with exact_gradients():
                    exact = torch.autograd.grad(loss, wanted + outs, allow_unused=True)
            finally:
                for layer in layers:
                    layer.exact_weight_grad = True
            given = iter(exact[: len(wanted)])
            bp_grads = [None if g else next(given) for g in gram]
            bp_deltas = _per_layer(exact[len(wanted) :], counts)
        else:  # no layer has a B: the rule *is* backprop, a second pass would repeat it
            bp_grads, bp_deltas = list(rule_grads), rule_deltas
        return StepContext(
            names=self.names,
            weights_before=self._copy_weights(weights),
            weights_after=[w.detach() for w in weights],
            feedback=[layer.feedback for layer in layers],
            rule_grads=rule_grads,
            bp_grads=bp_grads,
            rule_deltas=rule_deltas,
            bp_deltas=bp_deltas,
            inputs=inputs,
            attempted=[0] * len(layers),
        )

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
    def checkpoint(self, epoch_done: bool) -> None:
        """Commit every row so far together with the state the next step needs."""
        if self.writer is None:
            return
        arrays = checkpoint.capture(
            self.model, self.optimizer, {"shuffle": self.shuffle}, self.order
        )
        counters = {
            "step": self.step,
            "epoch": self.epoch,
            "batch": self.batch,
            "epoch_done": epoch_done,
            "last_snapshot": self.last_snapshot,
            "final": self.final,
        }
        checkpoint.save(self.writer, arrays, counters)
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
        order = checkpoint.restore(self.model, self.optimizer, {"shuffle": self.shuffle}, arrays)
        self.order = order.to(self.device) if order is not None else None
        self.step, self.last_snapshot = counters["step"], counters["last_snapshot"]
        self.epoch, self.batch = counters["epoch"], counters["batch"]
        self.final = dict(counters["final"])
        if counters["epoch_done"]:
            self.epoch, self.batch, self.order = self.epoch + 1, 0, None
        self._resumed = True

    def keep_safe(self) -> None:
        """After a step: a checkpoint when one is due, else a commit when one is due; this
        bounds what a hard kill can lose."""
        every = self.config.probes.checkpoint_every
        if every and self.step % every == 0:
            self.checkpoint(epoch_done=False)
        elif self.writer is not None:
            self.writer.commit_if_due()

    # -- the loop ------------------------------------------------------------------------------
    def run(self) -> RunResult:
        cfg = self.config.train
        x_train, y_train = self.data.x_train.to(self.device), self.data.y_train.to(self.device)
        n = len(x_train)
        steps_per_epoch = math.ceil(n / cfg.batch_size)
        total = cfg.epochs * steps_per_epoch
        bar = _progress(total, self.progress, initial=self.step)
        status, message = "completed", ""
        self.model.train()
        if not self._resumed:
            self.epoch = 1
            if self._due_snapshot(0):
                self._snapshot()
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
                    bar.update(1)
                    self.keep_safe()
                    if self.stop_requested:
                        raise StopRequested
                    if self.step % 20 == 1 or self.step == total:
                        bar.set_postfix(
                            loss=f"{row['loss']:.4f}",
                            acc=f"{row['batch_accuracy']:.3f}",
                            refresh=False,
                        )
                self._end_epoch()
                if per_epoch and self._checkpoint_due():
                    self.checkpoint(epoch_done=True)
                elif self.writer is not None:
                    self.writer.commit()
                self.epoch, self.batch, self.order = self.epoch + 1, 0, None
        except Diverged as err:
            if err.row is not None and self.writer is not None:
                self.writer.append_step(err.row)
            status, message = "diverged", f"{err}; lower train.lr or set train.grad_clip"
        except StopRequested:  # between two steps: the state is whole, keep it
            status = "interrupted"
            message = f"stopped by {self.stop_requested} after step {self.step}"
            self.checkpoint(epoch_done=False)
        except KeyboardInterrupt:  # inside a step: the last checkpoint stands
            cause = self.stop_requested or "KeyboardInterrupt"
            status, message = "interrupted", f"stopped by {cause} during step {self.step}"
        finally:
            bar.close()
            if (
                self.writer is not None
                and status != "interrupted"
                and self.last_snapshot != self.step
            ):
                self._snapshot()
        done = int(self.final.get("epoch", 0))
        return RunResult(status, message, self.step, done, dict(self.final))

    def _due_snapshot(self, step: int) -> bool:
        every = self.config.probes.snapshot_every
        return every > 0 and step % every == 0

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


def _rows(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Stack tensors (N, ..., F) into one (rows, F) matrix: one row per sample (and time step)."""
    rows = [t.detach().reshape(-1, t.shape[-1]) for t in tensors]
    return rows[0] if len(rows) == 1 else torch.cat(rows)


def _per_layer(grads: tuple, counts: list[int]) -> list[torch.Tensor]:
    """Each layer's captured-output gradients as rows (several captures for a recurrent layer)."""
    out, i = [], 0
    for c in counts:
        parts = [g for g in grads[i : i + c] if g is not None]
        out.append(_rows(parts) if parts else torch.zeros(1, 1))
        i += c
    return out


def _progress(total: int, enabled: bool, initial: int = 0):
    from tqdm.auto import tqdm

    # disable=None: tqdm draws only on a terminal, so logs and CI output stay clean
    return tqdm(
        total=total,
        initial=initial,
        disable=None if enabled else True,
        unit="step",
        dynamic_ncols=True,
        leave=False,
    )


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
