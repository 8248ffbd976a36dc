"""When a run snapshots W and B: the schedule that sizes its store.

Snapshots are almost all of a store (a 3x512 MLP's W on 784 inputs is 3.7 MB in float32, and
a B that the rule changes as much again; a fixed B is stored once), so their number, not the
run's length, should set its size. The default spaces them
evenly in log(step + 1): dense early, when the weights align with the feedback, sparse later
(Refinetti et al. keep 40 log-spaced saves), as many as a byte budget allows. An explicit
``snapshot_every`` keeps the old fixed interval.
"""

from __future__ import annotations

import math

#: fewest snapshots a budgeted schedule takes: the first and the last
MIN_SNAPSHOTS = 2
#: most snapshots a budgeted schedule takes, however small the net
MAX_SNAPSHOTS = 40


def log_spaced(total: int, count: int) -> tuple[int, ...]:
    """``count`` distinct steps from 0 to ``total`` (both included), evenly spaced in
    log(step + 1); every step when the run has no more than ``count`` of them."""
    if total <= 0:
        return (0,)
    if count >= total + 1:
        return tuple(range(total + 1))
    count = max(count, MIN_SNAPSHOTS)
    steps: list[int] = []
    for i in range(count):
        ideal = round(math.exp(math.log(total + 1) * i / (count - 1))) - 1
        lowest = steps[-1] + 1 if steps else 0
        highest = total - (count - 1 - i)  # leave a distinct step for each one still to come
        steps.append(min(max(ideal, lowest), highest))
    return tuple(steps)


def every_k(total: int, every: int) -> tuple[int, ...]:
    """Every ``every`` steps from 0, and the last step; none when ``every`` is 0."""
    if every <= 0:
        return ()
    steps = list(range(0, total + 1, every))
    if steps[-1] != total:
        steps.append(total)
    return tuple(steps)


def budget_count(budget_bytes: float, snapshot_bytes: int) -> int:
    """How many snapshots of ``snapshot_bytes`` fit in ``budget_bytes`` (at least the first and
    the last, at most :data:`MAX_SNAPSHOTS`)."""
    fits = int(budget_bytes // snapshot_bytes) if snapshot_bytes > 0 else MAX_SNAPSHOTS
    return min(max(fits, MIN_SNAPSHOTS), MAX_SNAPSHOTS)


def snapshot_steps(
    total: int, every: int | None, budget_mb: float, snapshot_bytes: int, once_bytes: int = 0
) -> tuple[int, ...]:
    """The steps a run of ``total`` steps snapshots: every ``every`` steps when it is set,
    else log-spaced within ``budget_mb`` megabytes (10**6 bytes) of snapshots, of which
    ``once_bytes`` (a fixed B, stored once) are spent before the first."""
    if every is not None:
        return every_k(total, every)
    return log_spaced(total, budget_count(budget_mb * 1e6 - once_bytes, snapshot_bytes))
