"""The `fc3-fa` preset's training written in plain torch, without dynalign: the floor that
`benchmarks/record_end_to_end.py` compares `dynalign record --preset fc3-fa` with.

Same work as the recorded run minus the recording: scikit-learn's 8x8 digits, 500 held out,
features z-scored with the training statistics, a 3x512 ReLU MLP whose backward pass uses a
fixed random feedback matrix B in place of W (feedback alignment), SGD with momentum 0.9 at lr
0.01, batches of 100, 30 epochs, and after each epoch the loss and accuracy on the training and
validation sets. Prints the last epoch's validation accuracy. With ``--freeze-at-exit`` it
ends as ``dynalign`` does, with ``gc.freeze()``, which spares the interpreter's shutdown the
collections that walk every object torch and scikit-learn created (0.7–0.8 s): the
like-for-like floor.

    python benchmarks/plain_fc3_fa.py [--epochs 30] [--threads 1] [--freeze-at-exit]
"""

from __future__ import annotations

import argparse
import gc
import math

import numpy as np
import torch
from sklearn.datasets import load_digits


class FeedbackLinear(torch.autograd.Function):
    """y = x Wᵀ + b; the input's gradient goes back through B instead of W."""

    @staticmethod
    def forward(ctx, x, weight, bias, feedback):
        ctx.save_for_backward(x, feedback)
        return torch.addmm(bias, x, weight.t())

    @staticmethod
    def backward(ctx, grad):
        x, feedback = ctx.saved_tensors
        return grad @ feedback, grad.t() @ x, grad.sum(0), None


class FALayer(torch.nn.Linear):
    def __init__(self, n_in: int, n_out: int):
        super().__init__(n_in, n_out)
        bound = 1.0 / math.sqrt(n_in)
        self.register_buffer("feedback", torch.empty(n_out, n_in).uniform_(-bound, bound))

    def forward(self, x):
        return FeedbackLinear.apply(x, self.weight, self.bias, self.feedback)


def data(n_val: int = 500, seed: int = 0):
    digits = load_digits()
    x = digits.images.reshape(len(digits.images), -1).astype(np.float32)
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(x))
    val, train = order[:n_val], order[n_val:]
    mean, std = x[train].mean(0), x[train].std(0)
    std[std == 0] = 1.0
    x = (x - mean) / std
    return (torch.from_numpy(x[train]), torch.from_numpy(y[train])), (
        torch.from_numpy(x[val]),
        torch.from_numpy(y[val]),
    )


def evaluate(model, x, y) -> tuple[float, float]:
    with torch.no_grad():
        out = model(x)
        return torch.nn.functional.cross_entropy(out, y).item(), (
            (out.argmax(1) == y).float().mean().item()
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--freeze-at-exit", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    (x_train, y_train), (x_val, y_val) = data()
    width = 512
    model = torch.nn.Sequential(
        FALayer(64, width),
        torch.nn.ReLU(),
        FALayer(width, width),
        torch.nn.ReLU(),
        FALayer(width, width),
        torch.nn.ReLU(),
        FALayer(width, 10),
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    shuffle = torch.Generator().manual_seed(0)
    for _ in range(args.epochs):
        order = torch.randperm(len(x_train), generator=shuffle)
        for start in range(0, len(order), 100):
            idx = order[start : start + 100]
            loss = torch.nn.functional.cross_entropy(model(x_train[idx]), y_train[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        evaluate(model, x_train, y_train)
        _, val_accuracy = evaluate(model, x_val, y_val)
    print(f"val accuracy after {args.epochs} epochs: {val_accuracy:.3f}")
    if args.freeze_at_exit:
        gc.freeze()


if __name__ == "__main__":
    main()
