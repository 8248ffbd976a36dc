"""Direct feedback alignment (Nøkland 2016): the output error reaches every hidden layer
directly, through that layer's own fixed random matrix.

The read-out layer works as under FA (its B has W's shape). Every other layer's B has the
shape ``(n_outputs, *input shape)``: in the backward pass the error at that layer's input is
``e B`` with e the error at the network's output, whatever arrived from the layer above. The
read-out's backward pass, which autograd always runs first, hands e to the others.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import Config
from ..feedback import FeedbackLayer, feedback_layers
from .base import output_layer, random_like
from .fa import FeedbackAlignment


class _OutputError:
    """Records the error at the read-out's output for the layers below to use."""

    def __init__(self) -> None:
        self.error: torch.Tensor | None = None

    def __call__(self, grad_out, feedback, x_shape, needed):
        self.error = grad_out.reshape(-1, grad_out.shape[-1])
        return None  # the read-out itself sends its error down through its own B, as FA


class _Direct:
    """A hidden layer's input error: the output error through the layer's own B."""

    def __init__(self, source: _OutputError) -> None:
        self.source = source

    def __call__(self, grad_out, feedback, x_shape, needed):
        if not needed:
            return None
        error = self.source.error
        if error is None or error.shape[0] != x_shape[0]:
            raise RuntimeError(
                "direct feedback alignment found no output error for this batch; the read-out "
                "layer's backward pass must run before the hidden layers'"
            )
        return (error @ feedback.reshape(feedback.shape[0], -1)).reshape(x_shape)


def input_shapes(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
    """Each feedback layer's input shape (one sample), from one forward pass of zeros."""
    shapes: dict[str, tuple[int, ...]] = {}

    def hook(name):
        def keep(module, args) -> None:  # returns None: the forward pass itself is unchanged
            shapes.setdefault(name, tuple(args[0].shape[1:]))

        return keep

    hooks = [
        layer.register_forward_pre_hook(hook(name))
        for name, layer in feedback_layers(model).items()
    ]
    training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros((2, *input_shape)))
    finally:
        model.train(training)
        for hook in hooks:
            hook.remove()
    return shapes


class DirectFeedbackAlignment(FeedbackAlignment):
    name = "dfa"

    @classmethod
    def check(cls, config: Config) -> str | None:
        if config.model.kind == "rnn":
            return (
                "rule.name=dfa is not defined for the rnn model (its error would have to reach "
                "every time step directly); use fa, a sign-symmetry rule, kp or wm"
            )
        return None

    def attach(
        self, model: nn.Module, generator: torch.Generator, input_shape: tuple[int, ...]
    ) -> None:
        shapes = input_shapes(model, input_shape)
        _, readout = output_layer(model)
        n_outputs = readout.weight.shape[0]
        source = _OutputError()
        for name, layer in feedback_layers(model).items():
            shape = tuple(readout.weight.shape) if layer is readout else (n_outputs, *shapes[name])
            self._draw(layer, shape, generator)
            layer.route = source if layer is readout else _Direct(source)

    def _draw(self, layer: FeedbackLayer, shape: tuple[int, ...], generator) -> None:
        """B as W was drawn (uniform in ±1/sqrt(fan-in), times rule.scale), in B's shape."""
        w = layer.weight
        b = random_like(
            shape, layer.init_bound() * self.config.scale, self.config.distribution, generator
        )
        layer.feedback = b.to(dtype=w.dtype, device=w.device)
