"""The recorder: merges what the probes due on a step need, and writes the step's row, weight
snapshots and autoencoder reconstructions.

The trainer asks ``needs(step)`` before a step (a reference pass only when a due probe needs
one) and hands the finished step to ``record``. Every probe keeps its own schedule: the
per-layer probes every ``probes.every`` steps, the scalars every step, snapshots of W and B on
the schedule of :mod:`dynalign.snapshot_schedule` (log-spaced within ``probes.snapshot_budget``,
or every ``probes.snapshot_every`` steps; always the first and last), reconstructions of the
probe inputs every ``probes.reconstruction_every`` steps (and the first and last).
"""

from __future__ import annotations

import torch

from .config import Config
from .feedback import FeedbackLayer
from .probes import (
    ReconstructionProbe,
    ScalarProbe,
    SnapshotProbe,
    StepContext,
    snapshot_bytes,
    step_probes,
)
from .snapshot_schedule import snapshot_steps
from .store import RunWriter

#: needs that make the forward pass keep each layer's output and input
CAPTURE = frozenset({"reference", "outputs"})


class Recorder:
    def __init__(
        self,
        config: Config,
        model: torch.nn.Module,
        layers: dict[str, FeedbackLayer],
        probe_inputs: torch.Tensor | None = None,
        total_steps: int = 0,
        feedback_fixed: bool = False,
    ):
        self.writer: RunWriter | None = None
        self._due: tuple[int, list] = (-1, [])
        self.scalars = ScalarProbe(tuple(getattr(model, "loss_term_names", ())))
        self.probes = step_probes(config.probes.every)
        p = config.probes
        schedule = snapshot_steps(
            total_steps,
            p.snapshot_every,
            p.snapshot_budget,
            *snapshot_bytes(layers, p.snapshot_dtype, feedback_fixed),
        )
        self.snapshots = SnapshotProbe(frozenset(schedule), layers)
        self.reconstructions = None
        if probe_inputs is not None:  # an autoencoder's fixed inputs
            every = config.probes.reconstruction_every
            self.reconstructions = ReconstructionProbe(every, model, probe_inputs)

    def due(self, step: int) -> list:
        """The per-layer probes due on ``step`` (none without a store to write to); asked
        before the step and again when it is recorded, worked out once."""
        if self.writer is None:
            return []
        if self._due[0] != step:
            self._due = (step, [p for p in self.probes if p.due(step)])
        return self._due[1]

    def needs(self, step: int) -> frozenset[str]:
        """Everything the probes due on ``step`` need from it."""
        return frozenset().union(*(p.needs for p in self.due(step)))

    def record(self, row: dict, ctx: StepContext) -> dict:
        """Complete ``row`` (which holds the scalars already, see ``ScalarProbe``) with the due
        probes' values and write it (and a snapshot when due)."""
        if self.writer is None:
            return row
        for probe in self.due(ctx.step):
            row.update(probe.compute(ctx))
        self.writer.append_step(row)
        self.take_snapshots(ctx.step)
        return row

    def append(self, row: dict) -> None:
        """A row with no probe values (the step that diverged)."""
        if self.writer is not None:
            self.writer.append_step(row)

    def take_snapshots(self, step: int, final: bool = False) -> None:
        """W and B, and reconstructions, where their schedules (or the run's end) ask for them."""
        if self.writer is None:
            return
        for probe in (self.snapshots, self.reconstructions):
            if probe is not None and probe.due(step, final):
                probe.take(self.writer, step)

    def progress(self, snapshot_in_flight: bool = False) -> dict[str, int]:
        """The steps of the last snapshot and reconstruction (a checkpoint keeps them); with
        ``snapshot_in_flight``, the snapshot before the last (the last is still being written)."""
        rec = self.reconstructions
        snaps = self.snapshots
        return {
            "last_snapshot": snaps.previous if snapshot_in_flight else snaps.last,
            "last_reconstruction": rec.last if rec is not None else -1,
        }

    def restore(self, counters: dict) -> None:
        self.snapshots.last = counters["last_snapshot"]
        if self.reconstructions is not None:
            # stores written before reconstructions had their own schedule took them with
            # the snapshots
            self.reconstructions.last = counters.get(
                "last_reconstruction", counters["last_snapshot"]
            )
