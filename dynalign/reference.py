"""The double backward pass: one forward graph differentiated under the rule and under BP.

On a step where a probe needs it, the loss is differentiated once under the learning rule (the
update the optimiser applies, left in ``.grad``) and once inside ``exact_gradients()`` (the
true gradient), on exactly the same graph. Both passes also return the error arriving at every
layer's output (its "delta"), captured in the forward pass. The BP pass does not form the true
weight gradient of a Linear layer where its Gram form is cheaper (``gram_is_cheaper``): the
angle needs only its inner products.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .feedback import FeedbackLayer, exact_gradients


@dataclass
class Gradients:
    """What the two passes leave behind, per layer (in the order of the layers given)."""

    rule_grads: list[torch.Tensor | None]  # the update the optimiser applies (W's .grad)
    rule_deltas: list[torch.Tensor]  # error at the layer's output, one row per sample
    outputs: list[torch.Tensor]  # the layer's output rows (detached)
    inputs: list[torch.Tensor | None]  # the layer's input rows (Linear layers)
    bp_grads: list[torch.Tensor | None] | None = None  # None inside: see gram_is_cheaper
    bp_deltas: list[torch.Tensor] | None = None  # None: no reference pass was asked for


def gram_is_cheaper(x: torch.Tensor, delta: torch.Tensor) -> bool:
    """Is the Gram form of a Linear layer's gradient products cheaper than forming δᵀx?

    With R rows, n_in inputs and n_out outputs the Gram form costs R²·(n_in + 2·n_out)
    multiply-adds and forming the gradient R·n_in·n_out.
    """
    rows, n_in, n_out = x.shape[0], x.shape[1], delta.shape[1]
    return delta.shape[0] == rows and rows * (n_in + 2 * n_out) < n_in * n_out


def start_capture(layers: list[FeedbackLayer]) -> None:
    """Make the next forward pass keep every layer's output and input for ``backward``."""
    for layer in layers:
        layer.capturing = True


def stop_capture(layers: list[FeedbackLayer]) -> None:
    for layer in layers:
        layer.release_captured()


def backward(
    loss: torch.Tensor,
    params: list[torch.Tensor],
    layers: list[FeedbackLayer],
    reference: bool,
) -> Gradients:
    """Set every parameter's ``.grad`` to the rule's gradient; with ``reference``, also the
    true gradients and deltas. The forward pass must have run under ``start_capture``."""
    captured = [layer.release_captured() for layer in layers]
    counts = [len(outs) for outs, _ in captured]
    outs = [t for layer_outs, _ in captured for t in layer_outs]
    inputs = [
        _rows(ins, layer) if ins else None for (_, ins), layer in zip(captured, layers, strict=True)
    ]
    weights = [layer.weight for layer in layers]
    n = len(params)
    # the deltas are asked for only where a reference pass will be compared with them
    grads = torch.autograd.grad(
        loss, params + (outs if reference else []), retain_graph=reference, allow_unused=True
    )
    for p, g in zip(params, grads[:n], strict=True):
        p.grad = g
    result = Gradients(
        rule_grads=[w.grad for w in weights],
        rule_deltas=_per_layer(grads[n:], counts, layers) if reference else [],
        outputs=_per_layer(outs, counts, layers),
        inputs=inputs,
    )
    if not reference:
        return result
    if not any(layer.has_feedback() or layer.route is not None for layer in layers):
        # no layer has a B: the rule *is* backprop, a second pass would repeat it
        result.bp_grads, result.bp_deltas = list(result.rule_grads), result.rule_deltas
        return result
    gram = [
        x is not None and gram_is_cheaper(x, d)
        for x, d in zip(inputs, result.rule_deltas, strict=True)
    ]
    wanted = [w for w, g in zip(weights, gram, strict=True) if not g]
    for layer, g in zip(layers, gram, strict=True):
        layer.exact_weight_grad, layer.exact_bias_grad = not g, False
    try:
        with exact_gradients():
            exact = torch.autograd.grad(loss, wanted + outs, allow_unused=True)
    finally:
        for layer in layers:
            layer.exact_weight_grad = layer.exact_bias_grad = True
    given = iter(exact[: len(wanted)])
    result.bp_grads = [None if g else next(given) for g in gram]
    result.bp_deltas = _per_layer(exact[len(wanted) :], counts, layers)
    return result


def _rows(tensors: list[torch.Tensor], layer: FeedbackLayer) -> torch.Tensor:
    """Stack a layer's captured tensors into one (rows, features) matrix (``as_rows``)."""
    rows = [layer.as_rows(t.detach()) for t in tensors]
    return rows[0] if len(rows) == 1 else torch.cat(rows)


def _per_layer(grads, counts: list[int], layers: list[FeedbackLayer]) -> list[torch.Tensor]:
    """Each layer's captured tensors as rows (several captures for a recurrent layer)."""
    out, i = [], 0
    for c, layer in zip(counts, layers, strict=True):
        parts = [g for g in grads[i : i + c] if g is not None]
        out.append(_rows(parts, layer) if parts else torch.zeros(1, 1))
        i += c
    return out
