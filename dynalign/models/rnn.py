"""Vanilla RNN trained by backpropagation through time, under BP or feedback alignment.

``h_t = σ(H h_{t-1} + W_x x_t + b)``, ``y_t = U h_t + c`` (softmax in the loss), ``h_0 = 0``.
W_x, H and U are feedback ``Linear`` layers, so autograd through the unrolled loop *is* BPTT
and the rule decides the backward path: under FA the error reaching ``h_t`` is
``B_Uᵀ e_t + B_Hᵀ δ_{t+1}`` (the study's U_back and H_back), and W_x's error at earlier steps
arrives through B_H. ``exact_gradients()`` turns the same graph back into true BPTT.

Two tasks, told apart by the per-sample ``input_shape``:

* ``(T,)``: next-character prediction. Input: long tensor (N, T) of token indices from a
  vocabulary of ``n_outputs`` symbols, one-hot encoded here. Output: logits (N, T, n_outputs),
  one prediction per position (the base class flattens them for the loss and accuracy).
* ``(C, H, W)`` or ``(H, W)``: sequential images. Input: float (N, C, H, W) or, for C = 1,
  (N, H, W). Row r (its C·W values) is step r, so T = H; the class is read from the last step
  only. Output: logits (N, n_outputs).

Capture (for delta-angle probes), per forward pass: ``rnn.W_x`` and, for text, ``rnn.U`` are
applied to all steps at once and capture one tensor with a time axis, (N, T, ·); ``rnn.H``
captures one (N, width) tensor per step t = 2..T (H h_0 is zero and is not computed); for images
``rnn.U`` captures the last step's (N, n_outputs).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from ..config import RNN_ACTIVATIONS, ConfigError
from ..feedback import Linear
from .base import Network
from .mlp import make_activation

if TYPE_CHECKING:
    from ..config import ModelConfig


class RecurrentCore(nn.Module):
    """The three feedback layers and the nonlinearity; their paths are ``rnn.W_x`` etc."""

    def __init__(self, n_features: int, width: int, n_outputs: int, activation: str):
        super().__init__()
        self.W_x = Linear(n_features, width, bias=True)  # bias b
        self.H = Linear(width, width, bias=False)
        self.U = Linear(width, n_outputs, bias=True)  # bias c
        self.act = make_activation(activation, width)

    def hidden_states(self, xs: torch.Tensor) -> torch.Tensor:
        """All hidden states (N, T, width) for inputs (N, T, n_features), starting at h_0 = 0."""
        if xs.shape[1] == 0:
            raise ValueError("RNN input has no time steps; pass sequences of length T >= 1")
        drive = self.W_x(xs)  # one call for every step: (N, T, width)
        h = self.act(drive[:, 0])
        states = [h]
        for t in range(1, xs.shape[1]):
            h = self.act(self.H(h) + drive[:, t])
            states.append(h)
        return torch.stack(states, dim=1)


class RNN(Network):
    """Elman RNN for next-character prediction or row-by-row image classification."""

    reads = ("width", "activation")
    activations = RNN_ACTIVATIONS

    def __init__(
        self, input_shape: tuple[int, ...], n_outputs: int, width: int, activation: str = "tanh"
    ):
        super().__init__()
        input_shape = tuple(int(s) for s in input_shape)
        if not input_shape:
            raise ConfigError("RNN input_shape is empty; give (T,) or (C, H, W)")
        if activation not in RNN_ACTIVATIONS:
            raise ConfigError(
                f"RNN activation {activation!r} is not supported; "
                f"use one of {', '.join(RNN_ACTIVATIONS)} (model.activation)"
            )
        if width < 1 or n_outputs < 1:
            raise ConfigError(
                f"RNN needs width >= 1 and n_outputs >= 1, got width={width}, "
                f"n_outputs={n_outputs}; set model.width to 1 or more and use labelled data"
            )
        if min(input_shape) < 1:
            raise ConfigError(
                f"RNN input_shape {input_shape} has an empty dimension; use data with samples"
            )
        if len(input_shape) == 1:
            self.task = "sequence"
            n_features = n_outputs  # the input vocabulary is the output vocabulary
        elif len(input_shape) in (2, 3):
            self.task = "image"
            n_features = math.prod(input_shape) // input_shape[-2]  # C * W values per row
        else:
            raise ConfigError(
                f"RNN input_shape {input_shape} is neither (T,) token sequences "
                "nor (C, H, W) / (H, W) images; use text or image data for an rnn"
            )
        self.input_shape = input_shape
        self.n_outputs = n_outputs
        self.rnn = RecurrentCore(n_features, width, n_outputs, activation)

    @classmethod
    def from_config(
        cls,
        model_config: ModelConfig,
        input_shape: tuple[int, ...],
        n_outputs: int,
        generator: torch.Generator | None = None,
    ) -> RNN:
        return cls(input_shape, n_outputs, model_config.width, model_config.activation)

    @classmethod
    def size(
        cls, model_config: ModelConfig, input_shape: tuple[int, ...], n_outputs: int
    ) -> tuple[int, int]:
        width = model_config.width
        steps = input_shape[0] if len(input_shape) == 1 else input_shape[-2]
        features = n_outputs if len(input_shape) == 1 else math.prod(input_shape) // max(steps, 1)
        weights = (features + 1) * width + width**2 + (width + 1) * n_outputs
        return weights, steps * (features + width + n_outputs)

    @classmethod
    def what_to_lower(cls, model_config: ModelConfig) -> str:
        return f"lower model.width (now {model_config.width}) or train.batch_size"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.task == "sequence":
            hidden = self.rnn.hidden_states(self._one_hot(x))
            return self.rnn.U(hidden)  # (N, T, V)
        hidden = self.rnn.hidden_states(self._rows(x))
        return self.rnn.U(hidden[:, -1])  # (N, n_outputs)

    def _one_hot(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 or x.is_floating_point() or x.is_complex():
            raise ValueError(
                f"RNN on token sequences expects an integer tensor (N, T) of token "
                f"indices, got {x.dtype} of shape {tuple(x.shape)}"
            )
        if x.numel() and (int(x.min()) < 0 or int(x.max()) >= self.n_outputs):
            raise ValueError(
                f"token indices must lie in [0, {self.n_outputs}), got "
                f"[{int(x.min())}, {int(x.max())}]; n_outputs is the vocabulary"
            )
        return F.one_hot(x, self.n_outputs).to(self.rnn.W_x.weight.dtype)

    def _rows(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) or (N, H, W) images as (N, H, C·W): one row per step."""
        shape = tuple(x.shape[1:])
        image = self.input_shape if len(self.input_shape) == 3 else (1, *self.input_shape)
        if shape == image[1:] and image[0] == 1:
            x = x.unsqueeze(1)
        elif shape != image:
            raise ValueError(
                f"RNN on images expects input (N, {', '.join(map(str, image))})"
                f" (or (N, H, W) for one channel), got shape {tuple(x.shape)}"
            )
        if not x.is_floating_point():
            raise ValueError(f"RNN on images expects a floating-point tensor, got {x.dtype}")
        n, c, h, w = x.shape
        return x.permute(0, 2, 1, 3).reshape(n, h, c * w)
