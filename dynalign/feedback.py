"""Feedback layers: the forward pass uses W, the backward pass sends the error through B.

A feedback layer keeps its forward weight ``weight`` (W) and, for rules that need one, a
feedback tensor ``feedback`` (B, same shape as W, a buffer the optimiser never sees). Its
weight gradient is always the local ``δᵀx``; only the error passed to the layer below differs
between rules. With ``feedback is None`` the layer propagates through W, which is exact
backpropagation.

``exact_gradients()`` switches every feedback layer to propagate through W, so that the same
graph, built by one forward pass, can be differentiated once under the rule and once under BP.
The switch is a process-wide counter rather than a thread-local flag: on CUDA the autograd
engine runs backward functions on its own device threads, which would not see a thread-local.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

_EXACT = 0


@contextlib.contextmanager
def exact_gradients():
    """Within this block every feedback layer backpropagates through W (true gradients)."""
    global _EXACT
    _EXACT += 1
    try:
        yield
    finally:
        _EXACT -= 1


def exact_mode() -> bool:
    return _EXACT > 0


def backward_matrix(weight: torch.Tensor, feedback: torch.Tensor | None) -> torch.Tensor:
    """The tensor that carries the error downwards now: W under BP or exact mode, else B."""
    return weight if feedback is None or exact_mode() else feedback


def wants_bias_grad(layer) -> bool:
    """Does this backward pass form the layer's bias gradient? Not in a probe's reference
    pass: the probes compare weight gradients only."""
    return layer.exact_bias_grad or not exact_mode()


def routed_error(layer, grad_out, feedback, x_shape, needed: bool) -> torch.Tensor | None:
    """The error a rule with its own route (DFA) sends to the layer's input; None: the usual
    path through B. Exact mode always takes the usual path (through W)."""
    route = layer.route
    if route is None or exact_mode():
        return None
    return route(grad_out, feedback, x_shape, needed)


class _LinearFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, feedback, layer):
        ctx.save_for_backward(x, weight, feedback)
        ctx.has_bias = bias is not None
        ctx.layer = layer
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, feedback = ctx.saved_tensors
        grad_w = grad_b = None
        grad_x = routed_error(ctx.layer, grad_out, feedback, x.shape, ctx.needs_input_grad[0])
        if grad_x is None and ctx.needs_input_grad[0]:
            grad_x = grad_out @ backward_matrix(weight, feedback)
        # a probe that only needs the true error signal switches the weight gradient off
        want_w = ctx.layer.exact_weight_grad or not exact_mode()
        if ctx.needs_input_grad[1] and want_w:
            grad_w = grad_out.reshape(-1, grad_out.shape[-1]).t() @ x.reshape(-1, x.shape[-1])
        if ctx.has_bias and ctx.needs_input_grad[2] and wants_bias_grad(ctx.layer):
            grad_b = grad_out.reshape(-1, grad_out.shape[-1]).sum(0)
        return grad_x, grad_w, grad_b, None, None


#: a layer's attributes that hold plain values (flags, the captured tensors), set a few dozen
#: times on a probe step: stored as they are, without ``nn.Module.__setattr__``'s checks for
#: parameters, buffers and modules (about 5 µs each, a tenth of a small net's step)
_PLAIN = frozenset(
    {
        "capturing",
        "captured",
        "captured_inputs",
        "exact_weight_grad",
        "exact_bias_grad",
        "feedback_needed",
    }
)


class FeedbackLayer(nn.Module):
    """Base of every layer whose backward pass a learning rule controls.

    Subclasses define ``weight`` (a Parameter) and call ``self._capture(out, x)`` on their
    pre-activation output (and input) so that probes can compare the error signal arriving
    there under the rule and under BP (the delta angle), and rebuild weight gradients from
    error and input where that is cheaper than asking autograd for them.

    A rule that renews B from W after every step (``dynalign.renewal``) may leave the renewal
    owed (``defer_renewal``) where no backward pass sends an error through B: a layer whose
    input needs no gradient, the first layer of a net, whose B (three quarters of a 3×512
    net's on 3072 inputs) only probes, snapshots and checkpoints read. Reading ``feedback``
    writes an owed renewal first, from W as it is then, which is W as the step left it (a
    renewal is a function of W and of the step's recipe only), so every reader sees the B that
    renewing after every step gives, bitwise; ``state_dict`` and moves read it too.
    """

    feedback: torch.Tensor | None

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("feedback", None)
        #: a rule whose error does not travel layer by layer (DFA) sets a callable here:
        #: ``route(grad_out, feedback, x_shape, needed) -> grad_x or None``
        self.route = None
        self.capturing = False
        self.captured: list[torch.Tensor] = []
        self.captured_inputs: list[torch.Tensor] = []
        self.exact_weight_grad = True  # False: exact_gradients() passes skip this weight's grad
        self.exact_bias_grad = True  # False: ... and this bias's
        #: whether the last forward pass under autograd sends an error through B (its input
        #: needs a gradient); where it does not, a renewal of B can wait (``defer_renewal``)
        self.feedback_needed = True

    # -- B renewed when read (see the class docstring) -----------------------------------------
    def __getattr__(self, name: str):
        if name == "feedback":
            self._write_owed_renewal()
        return super().__getattr__(name)

    def __setattr__(self, name: str, value) -> None:
        if name in _PLAIN:
            self.__dict__[name] = value
            return
        if name == "feedback":  # a new B owes nothing
            self.__dict__["_owed"] = None
        super().__setattr__(name, value)

    def defer_renewal(self, renewal) -> None:
        """Owe B this ``Renewal`` (of W after the step just taken) until B is next read; it
        replaces any renewal owed before (a renewal writes every element from W alone)."""
        self.__dict__["_owed"] = renewal

    def take_owed_renewal(self):
        """The renewal B is owed, no longer owed (the caller writes B afresh), or None."""
        owed = self.__dict__.get("_owed")
        self.__dict__["_owed"] = None
        return owed

    def feedback_buffer(self) -> torch.Tensor | None:
        """B's tensor as it stands, an owed renewal not written: for code that only looks at
        its shape or writes it whole (a rule's renewal targets it)."""
        return self._buffers["feedback"]

    def _write_owed_renewal(self) -> None:
        owed = self.take_owed_renewal()
        if owed is not None:
            owed.apply(self._parameters["weight"].detach())

    def _save_to_state_dict(self, destination, prefix, keep_vars) -> None:
        self._write_owed_renewal()
        super()._save_to_state_dict(destination, prefix, keep_vars)

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        self.take_owed_renewal()  # B is replaced whole
        super()._load_from_state_dict(*args, **kwargs)

    def _apply(self, fn, recurse: bool = True):
        self._write_owed_renewal()  # the renewal holds the tensors of before the move
        return super()._apply(fn, recurse)

    def _feedback_for(self, x: torch.Tensor) -> torch.Tensor | None:
        """B for the backward pass of this forward pass: read (an owed renewal written) only
        where that pass sends an error through it, i.e. where the input needs a gradient."""
        needed = x.requires_grad
        self.feedback_needed = needed
        return self.feedback if needed else self._buffers["feedback"]

    def fan_in(self) -> int:
        return self.weight[0].numel()

    def propagates_through_weight(self) -> bool:
        """Is this pass plain backprop through W, so that torch's own backward does it?

        True without B and without a route of the rule's, unless the pass is captured for
        probes (their reference pass switches weight gradients off, see ``exact_weight_grad``),
        and always without gradients. torch's backward costs no Python per layer, which on a
        GPU, where a small net's step is a few hundred kernel launches, is a third of BP's
        step."""
        if not torch.is_grad_enabled():
            return True
        return self.feedback_buffer() is None and self.route is None and not self.capturing

    def has_feedback(self) -> bool:
        """Does the rule give this layer a B?"""
        return self.feedback_buffer() is not None

    def has_weight_shaped_feedback(self) -> bool:
        """Does B exist with W's shape (so that the angle between W and B is defined)?"""
        b = self.feedback_buffer()
        return b is not None and b.shape == self.weight.shape

    def init_bound(self) -> float:
        """Half-width of the uniform distribution the forward weights were drawn from."""
        return 1.0 / math.sqrt(self.fan_in())

    def reset_parameters(self) -> None:
        """W and b uniform in ±1/sqrt(fan_in), PyTorch's default scale for Linear and Conv."""
        bound = self.init_bound()
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def _capture(self, out: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        if self.capturing:
            self.captured.append(out)
            if x is not None:
                self.captured_inputs.append(x)
        return out

    @staticmethod
    def as_rows(t: torch.Tensor) -> torch.Tensor:
        """A captured tensor (N, ..., F) as a (rows, F) matrix: one row per sample (and time
        step), F the layer's features."""
        return t.reshape(-1, t.shape[-1])

    def release_captured(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Stop capturing and hand over what was captured (outputs, inputs)."""
        outs, ins = self.captured, self.captured_inputs
        self.capturing, self.captured, self.captured_inputs = False, [], []
        return outs, ins


class Linear(FeedbackLayer):
    """``y = x Wᵀ + b`` with the error sent down through B (or W under BP)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None
        self.reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.propagates_through_weight():
            return self._capture(F.linear(x, self.weight, self.bias), x)
        b = self._feedback_for(x)
        return self._capture(_LinearFn.apply(x, self.weight, self.bias, b, self), x)

    def extra_repr(self) -> str:
        rule = "feedback" if self.has_feedback() else "bp"
        return f"{self.in_features}, {self.out_features}, backward={rule}"


class CurrentFeedback(Sequence):
    """Each layer's B, read (an owed renewal written) only where it is asked for."""

    def __init__(self, layers: list[FeedbackLayer]):
        self.layers = layers

    def __getitem__(self, i):
        return self.layers[i].feedback

    def __len__(self) -> int:
        return len(self.layers)


def feedback_layers(model: nn.Module) -> dict[str, FeedbackLayer]:
    """Every feedback layer of a model by its module path (``fc1``, ``rnn.H``, ...)."""
    return {name: m for name, m in model.named_modules() if isinstance(m, FeedbackLayer)}
