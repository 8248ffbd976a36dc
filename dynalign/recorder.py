"""The recorder: merges what the probes due on a step need, and writes the step's row, weight
snapshots and autoencoder reconstructions.

The trainer asks ``needs(step)`` before a step (a reference pass only when a due probe needs
one) and hands the finished step to ``record``. Snapshots (W and B every
``probes.snapshot_every`` steps, and the first and last) and reconstructions of the probe
inputs (every ``probes.reconstruction_every`` steps) follow their own schedules.
"""

from __future__ import annotations

import torch

from .config import Config
from .feedback import FeedbackLayer
from .probes import StepContext, step_probes
from .store import RunWriter

#: needs that make the forward pass keep each layer's output and input
CAPTURE = frozenset({"reference", "outputs"})


class Recorder:
    def __init__(self, config: Config, model: torch.nn.Module, layers: dict[str, FeedbackLayer]):
        self.model, self.layers = model, layers
        self.writer: RunWriter | None = None
        self.probes = step_probes(config.probes.every)
        self.snapshot_every = config.probes.snapshot_every
        self.reconstruction_every = config.probes.reconstruction_every
        self.probe_inputs: torch.Tensor | None = None  # set for autoencoders
        self.last_snapshot = -1
        self.last_reconstruction = -1

    def due(self, step: int) -> list:
        if self.writer is None:
            return []
        return [p for p in self.probes if p.due(step)]

    def needs(self, step: int) -> frozenset[str]:
        """Everything the probes due on ``step`` need from it."""
        return frozenset().union(*(p.needs for p in self.due(step)))

    def record(self, row: dict, ctx: StepContext | None) -> None:
        """Complete ``row`` with the due probes' values and write it (and a snapshot when due)."""
        if self.writer is None:
            return
        if ctx is not None:
            for probe in self.due(ctx.step):
                row.update(probe.compute(ctx))
        self.writer.append_step(row)
        self.take_snapshots(row["step"])

    def append(self, row: dict) -> None:
        """A row with no probe values (the step that diverged)."""
        if self.writer is not None:
            self.writer.append_step(row)

    def take_snapshots(self, step: int, final: bool = False) -> None:
        """W and B, and reconstructions, where their schedules (or the run's end) ask for them."""
        if self.writer is None:
            return
        every = self.snapshot_every
        if (final or (every > 0 and step % every == 0)) and self.last_snapshot != step:
            self._snapshot(step)
        every = self.reconstruction_every
        if self.probe_inputs is not None and self.last_reconstruction != step:
            if final or (every > 0 and step % every == 0):
                self._reconstruct(step)

    def _snapshot(self, step: int) -> None:
        self.last_snapshot = step
        weights = {n: layer.weight.detach().cpu().numpy() for n, layer in self.layers.items()}
        feedback = {
            n: layer.feedback.cpu().numpy()
            for n, layer in self.layers.items()
            if layer.feedback is not None
        }
        self.writer.snapshot(step, weights, feedback)

    def _reconstruct(self, step: int) -> None:
        self.last_reconstruction = step
        rec = self.model.reconstruct(self.probe_inputs)
        self.writer.reconstruction(step, rec.reshape(len(rec), -1).cpu().numpy())
