"""Dale's law: forward weights whose signs are fixed for the whole run.

Each weight of every feedback layer gets a sign at construction (±1): per synapse, or per
presynaptic neuron, so that all outgoing synapses of one neuron are excitatory or all are
inhibitory. In PyTorch's ``(out, in, ...)`` weight layout a presynaptic neuron's outgoing
synapses form a *column* (dim 1; for a conv weight, one input channel).

An optimiser step that would carry a weight across zero is not undone but clipped: the weight
is set to exactly 0, and it may grow again on its own side later. ``project()`` does this after
every step and counts those attempted flips, the quantity whose rise precedes unlearning.
Biases are not constrained, and neither are feedback tensors B.

Most attempted flips are not new crossings: a weight already pinned at 0 is pushed across again
and again by the optimiser's momentum. ``project()`` therefore splits them into
``crossed`` (the weight was non-zero before the step) and ``pushed`` (it sat at exactly 0). To
know which weights sat at 0 without copying W before every step, the constraint keeps one bool
mask per layer: the weights exactly 0 after the last projection (or after init, or after the
layer's weights were loaded). Its cost is one byte per constrained weight (a quarter of the
float32 weights) and, per step, one ``and``, one sum and one comparison written into the mask in
place, all on the device. With ``reset_momentum`` the optimiser state of a clipped weight
(SGD's momentum, Adam's moment estimates) is cleared as well, so that stale momentum does not
push a pinned weight again at the next step.

With more excitatory than inhibitory weights of the same size, every unit's input from
non-negative (ReLU) activity has a positive mean that grows layer by layer: activations and
the first losses explode. ``balance=True`` scales inhibitory magnitudes by ``f / (1 - f)``
(f the excitatory fraction), so that each unit's expected input is zero, and then rescales the
layer so that its Frobenius norm is the one it was initialised with.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
from torch import nn

from .config import ConfigError, ConstraintConfig
from .feedback import FeedbackLayer, feedback_layers
from .registry import CONSTRAINTS

#: the constraint levels (every name of the registry but "none")
LEVELS = tuple(n for n in CONSTRAINTS.names() if n != "none")

#: per-weight optimiser state that ``reset_momentum`` clears where a weight is clipped: SGD's
#: momentum, Adam's (and AdamW's) first and second moments and AMSGrad's running maximum.
#: Scalar state (Adam's ``step``) is shared by the whole tensor and is left alone.
MOMENTUM_STATE = ("momentum_buffer", "exp_avg", "exp_avg_sq", "max_exp_avg_sq")


class SignConstraintError(ConfigError):
    """A sign constraint that cannot be built; the message says how to fix it."""


def draw_signs(
    shape: torch.Size | tuple[int, ...],
    excitatory_fraction: float,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """A float64 tensor of ±1, each entry +1 independently with ``excitatory_fraction``."""
    device = generator.device if generator is not None else None
    uniform = torch.rand(shape, generator=generator, dtype=torch.float64, device=device)
    return torch.where(uniform < excitatory_fraction, 1.0, -1.0).to(torch.float64)


def balanced_magnitudes(
    magnitude: torch.Tensor, sign: torch.Tensor, excitatory_fraction: float
) -> torch.Tensor:
    """Inhibitory magnitudes scaled by ``f / (1 - f)``, then all by one factor keeping the norm.

    With a fraction f of excitatory weights this makes a unit's expected input from
    non-negative activity zero, while the layer's overall size stays that of its init.
    """
    ratio = excitatory_fraction / (1.0 - excitatory_fraction)
    scaled = torch.where(sign < 0, magnitude * ratio, magnitude)
    norm = torch.linalg.vector_norm(scaled)
    if norm == 0:
        return scaled
    return scaled * (torch.linalg.vector_norm(magnitude) / norm)


def _layer_signs(
    weight: torch.Tensor, level: str, excitatory_fraction: float, generator: torch.Generator
) -> torch.Tensor:
    """Signs shaped like ``weight``: one per entry, or one per input unit shared by its column."""
    if level == "synapse":
        signs = draw_signs(weight.shape, excitatory_fraction, generator)
    else:
        per_input = draw_signs((weight.shape[1],), excitatory_fraction, generator)
        column = per_input.reshape(1, -1, *([1] * (weight.dim() - 2)))
        signs = column.expand(weight.shape)
    return signs.to(dtype=weight.dtype, device=weight.device).contiguous()


@dataclass(frozen=True, eq=False)
class ProjectionCounts:
    """One layer's clipped weights in one projection, split by where they were before the step.

    ``crossed``: weights that were non-zero before the step and ended on the wrong side (a real
    attempt to cross zero); ``pushed``: weights pinned at exactly 0 that the step pushed to the
    wrong side again. Both are 0-d int64 tensors on the weight's device, so producing them never
    waits for the device; :func:`projection_counts_to_ints` reads many with one host sync.
    """

    crossed: torch.Tensor
    pushed: torch.Tensor

    @property
    def attempted(self) -> torch.Tensor:
        """All clipped weights, ``crossed + pushed``: what ``project()`` counts."""
        return self.crossed + self.pushed

    def __int__(self) -> int:
        """``attempted`` as an int (a host sync), so code written for ``project()`` still works."""
        return int(self.attempted)

    def __float__(self) -> float:
        """``attempted`` as a float (a host sync), as ``float(project()[name])`` gives it."""
        return float(self.attempted)


class _RefreshOnLoad:
    """A load_state_dict post-hook: the layer's weights were replaced, so its mask is stale.

    It holds the constraint weakly (the model must not keep a dropped constraint alive) and
    pickles as a no-op, since the constraint does not travel with a pickled model.
    """

    def __init__(self, constraint: SignConstraint, name: str):
        self.ref = weakref.ref(constraint)
        self.name = name

    def __call__(self, module: nn.Module, incompatible_keys) -> None:
        constraint = self.ref() if self.ref is not None else None
        if constraint is not None and constraint.layers.get(self.name) is module:
            constraint.refresh(self.name)

    def __getstate__(self) -> dict:
        return {"name": self.name}

    def __setstate__(self, state: dict) -> None:
        self.name = state["name"]
        self.ref = None


class SignConstraint:
    """Fixed signs for the weights of ``layers`` and the projection that keeps them.

    Build it after the model is on its device and in its dtype: the signs are made there.
    ``reset_momentum``: ``project(optimizer)`` also clears the optimiser state of every weight it
    clips (see :data:`MOMENTUM_STATE`).
    """

    def __init__(
        self,
        layers: dict[str, FeedbackLayer],
        level: str,
        excitatory_fraction: float,
        generator: torch.Generator,
        balance: bool = False,
        reset_momentum: bool = False,
    ):
        if level not in LEVELS:
            raise SignConstraintError(
                f"sign constraint level {level!r} is unknown; set constraint.sign to none or "
                f"one of {', '.join(LEVELS)}"
            )
        if not 0.0 <= excitatory_fraction <= 1.0:
            raise SignConstraintError(
                f"excitatory_fraction={excitatory_fraction!r} must lie between 0 and 1; set "
                "constraint.excitatory_fraction to e.g. 0.8"
            )
        if balance and not 0.0 < excitatory_fraction < 1.0:
            raise SignConstraintError(
                "balance needs both excitatory and inhibitory weights, but excitatory_fraction="
                f"{excitatory_fraction!r}; choose a fraction strictly between 0 and 1, or "
                "balance=false"
            )
        if not layers:
            raise SignConstraintError(
                "a sign constraint needs at least one feedback layer; build the model from "
                "dynalign.feedback layers or set constraint.sign=none"
            )
        for name, layer in layers.items():
            if level == "neuron" and layer.weight.dim() < 2:
                raise SignConstraintError(
                    f"layer {name!r} has a {layer.weight.dim()}-D weight; neuron-level signs "
                    "need an (out, in, ...) weight, use level 'synapse'"
                )
        self.level = level
        self.excitatory_fraction = excitatory_fraction
        self.balance = balance
        self.reset_momentum = reset_momentum
        self.layers = dict(layers)
        self.signs: dict[str, torch.Tensor] = {}
        # per layer: which weights were exactly 0 after the last projection, and the parameter
        # the mask describes (a mask for a parameter that was since replaced is stale)
        self._zero: dict[str, torch.Tensor] = {}
        self._zero_of: dict[str, torch.Tensor] = {}
        with torch.no_grad():
            for name, layer in self.layers.items():
                sign = _layer_signs(layer.weight, level, excitatory_fraction, generator)
                self.signs[name] = sign
                magnitude = layer.weight.abs()
                if balance:
                    magnitude = balanced_magnitudes(magnitude, sign, excitatory_fraction)
                layer.weight.copy_(magnitude * sign)
        self.refresh()
        # a checkpoint restore loads the weights after the constraint is built: refresh then
        for name, layer in self.layers.items():
            layer.register_load_state_dict_post_hook(_RefreshOnLoad(self, name))

    def _sign_like(self, name: str, weight: torch.Tensor) -> torch.Tensor:
        """The layer's signs on the weight's current device and dtype (the model may have moved)."""
        sign = self.signs[name]
        if sign.device != weight.device or sign.dtype != weight.dtype:
            sign = self.signs[name] = sign.to(device=weight.device, dtype=weight.dtype)
        return sign

    def refresh(self, *names: str) -> None:
        """Recompute which weights are exactly 0 from the current weights (all layers by default).

        The masks follow the weights through ``project()`` only. A model's ``load_state_dict``
        refreshes them on its own; anything else that writes the weights between two steps
        (copying into ``layer.weight`` by hand) must call this before the next projection, or
        that projection tells crossed from pushed by the old zeros (``attempted`` is exact
        either way).
        """
        for name in names or tuple(self.layers):
            weight = self.layers[name].weight
            self._zero[name] = weight.detach() == 0
            self._zero_of[name] = weight

    def _zero_before(self, name: str, weight: torch.Tensor) -> torch.Tensor:
        """The layer's mask of weights at 0 before this step, rebuilt if missing or stale.

        A parameter replaced or reshaped since the mask was made gets a mask from its current
        weights, which have already taken the step: a weight clipped now then counts as
        ``crossed`` once. A model moved to another device keeps its values, so the mask moves.
        """
        zero = self._zero.get(name)
        if zero is None or self._zero_of.get(name) is not weight or zero.shape != weight.shape:
            self.refresh(name)
            zero = self._zero[name]
        elif zero.device != weight.device:
            zero = self._zero[name] = zero.to(weight.device)
        return zero

    def _project(
        self, optimizer: torch.optim.Optimizer | None
    ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Clip every layer; per layer (all clipped, of them pinned at 0 before the step)."""
        if self.reset_momentum and optimizer is None:
            raise SignConstraintError(
                "this sign constraint has reset_momentum=True but project() got no optimiser "
                "whose state it could clear; pass the optimiser, project(optimizer), or set "
                "constraint.reset_momentum=false"
            )
        counts: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        with torch.no_grad():
            for name, layer in self.layers.items():
                weight = layer.weight
                zero = self._zero_before(name, weight)
                wrong = (weight * self._sign_like(name, weight)) < 0
                counts[name] = (wrong.sum(), (wrong & zero).sum())
                weight.masked_fill_(wrong, 0.0)
                torch.eq(weight, 0, out=zero)
                if self.reset_momentum:
                    _clear_state(optimizer, weight, wrong)
        return counts

    def project(
        self, optimizer: torch.optim.Optimizer | None = None
    ) -> dict[str, ProjectionCounts]:
        """Zero every weight on the wrong side of zero; per layer, how many there were, split
        into crossings and pushes against zero.

        The counts are 0-d int64 tensors on the weights' device, so the hot path never waits
        for the device; :func:`counts_to_ints` reads them when recording. ``optimizer``: the
        one whose state ``reset_momentum`` clears (required then, unused otherwise).
        """
        return {
            name: ProjectionCounts(crossed=total - pushed, pushed=pushed)
            for name, (total, pushed) in self._project(optimizer).items()
        }

    def __repr__(self) -> str:
        return (
            f"SignConstraint(level={self.level!r}, excitatory_fraction="
            f"{self.excitatory_fraction}, balance={self.balance}, reset_momentum="
            f"{self.reset_momentum}, layers={list(self.layers)})"
        )


def _clear_state(
    optimizer: torch.optim.Optimizer, weight: torch.Tensor, clipped: torch.Tensor
) -> None:
    """Zero ``weight``'s per-weight optimiser state where it was clipped.

    ``optimizer.state`` is a defaultdict: ``get`` does not add an entry for a weight it does
    not hold yet (SGD without momentum never does), which would change its ``state_dict``.
    """
    state = optimizer.state.get(weight)
    if not state:
        return
    for key in MOMENTUM_STATE:
        buffer = state.get(key)
        if isinstance(buffer, torch.Tensor) and buffer.shape == weight.shape:
            buffer.masked_fill_(clipped, 0)


def counts_to_ints(counts: dict[str, ProjectionCounts]) -> dict[str, int]:
    """``project()``'s attempted flips per layer as Python ints (one host sync per call)."""
    if not counts:
        return {}
    values = torch.stack([c.attempted for c in counts.values()]).tolist()
    return dict(zip(counts, values, strict=True))


def projection_counts_to_ints(counts: dict[str, ProjectionCounts]) -> dict[str, dict[str, int]]:
    """``project()``'s counts as ``{layer: {"crossed", "pushed", "attempted"}}`` ints.

    One host sync per call, as :func:`counts_to_ints`.
    """
    if not counts:
        return {}
    pairs = torch.stack([torch.stack((c.crossed, c.pushed)) for c in counts.values()]).tolist()
    return {
        name: {"crossed": crossed, "pushed": pushed, "attempted": crossed + pushed}
        for name, (crossed, pushed) in zip(counts, pairs, strict=True)
    }


def make_constraint(
    cfg: ConstraintConfig, model: nn.Module, generator: torch.Generator
) -> SignConstraint | None:
    """The constraint ``cfg.sign`` asks for on every feedback layer of ``model``; None for none."""
    if cfg.sign == "none":
        return None
    return SignConstraint(
        feedback_layers(model),
        cfg.sign,
        cfg.excitatory_fraction,
        generator,
        cfg.balance,
        reset_momentum=cfg.reset_momentum,
    )
