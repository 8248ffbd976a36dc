"""2-D convolution as a feedback layer: the error goes down through B, the update stays local.

The forward pass is an ordinary convolution with W. On the CPU it runs on channels-last
activations (W itself keeps its layout): oneDNN's convolution of few input channels (an
image's) and torch's max pool are several times faster in that layout than in the default one,
and a layer's output keeps its input's layout, so the whole ConvNet runs in it. In the
backward pass the error reaching the input is the transposed convolution of the output error
with B (``conv2d_input`` with B in place of W), while the weight gradient is the local
correlation of the output error with the layer's own input, the same for every rule. With
``feedback is None`` (BP) or inside ``exact_gradients()`` the error goes through W, which is
the true gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .feedback import FeedbackLayer, backward_matrix, exact_mode, routed_error, wants_bias_grad


class _Conv2dFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, feedback, layer):
        ctx.save_for_backward(x, weight, feedback)
        ctx.has_bias = bias is not None
        ctx.layer = layer
        ctx.stride, ctx.padding = layer.stride, layer.padding
        return F.conv2d(x, weight, bias, layer.stride, layer.padding)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, feedback = ctx.saved_tensors
        grad_x = routed_error(ctx.layer, grad_out, feedback, x.shape, ctx.needs_input_grad[0])
        mask = [
            grad_x is None and ctx.needs_input_grad[0],
            ctx.needs_input_grad[1] and (ctx.layer.exact_weight_grad or not exact_mode()),
            ctx.has_bias and ctx.needs_input_grad[2] and wants_bias_grad(ctx.layer),
        ]
        if not any(mask):
            return grad_x, None, None, None, None
        # one call forms all three, as torch's own backward does (two separate calls read the
        # layer's error twice); the tensor given as the weight carries the error to the input
        # (B, or W under BP), the weight gradient takes only its shape
        dx, dw, db = torch.ops.aten.convolution_backward(
            grad_out,
            x,
            backward_matrix(weight, feedback) if mask[0] else weight,
            [weight.shape[0]] if ctx.has_bias else None,
            [ctx.stride] * 2,
            [ctx.padding] * 2,
            [1, 1],  # dilation
            False,  # transposed
            [0, 0],  # output padding
            1,  # groups
            mask,
        )
        if dw is not None:  # channels-last inputs give it their strides: W's own layout
            dw = dw.contiguous()
        return dx if mask[0] else grad_x, dw, db, None, None


class Conv2d(FeedbackLayer):
    """``y = W ⋆ x + b`` on (N, C, H, W) inputs, with the error sent down through B (or W)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        bias: bool = True,
    ):
        super().__init__()
        for name, value, least in (
            ("in_channels", in_channels, 1),
            ("out_channels", out_channels, 1),
            ("kernel_size", kernel_size, 1),
            ("stride", stride, 1),
            ("padding", padding, 0),
        ):
            if int(value) != value or value < least:
                raise ValueError(f"Conv2d {name}={value!r} must be an integer >= {least}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"Conv2d expects input of shape (N, {self.in_channels}, H, W), got "
                f"{tuple(x.shape)}; reshape the batch to (N, C, H, W)"
            )
        if x.device.type == "cpu":
            x = x.contiguous(memory_format=torch.channels_last)
        if self.propagates_through_weight():
            out = F.conv2d(x, self.weight, self.bias, self.stride, self.padding)
            return self._capture(out)
        out = _Conv2dFn.apply(x, self.weight, self.bias, self._feedback_for(x), self)
        return self._capture(out)

    @staticmethod
    def as_rows(t: torch.Tensor) -> torch.Tensor:
        """A feature map (N, C, H, W) as a row of C channels per sample and position, whatever
        its memory layout: a channels-last map is viewed, not copied, and two maps of
        different layouts still pair element by element."""
        return t.movedim(1, -1).reshape(-1, t.shape[1])

    def extra_repr(self) -> str:
        rule = "feedback" if self.has_feedback() else "bp"
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, backward={rule}"
        )
