"""The names a config may choose, one registry per kind: rules, models, data sets, batch-norm
kinds, activations and sign-constraint levels.

Each entry names where its implementation lives (``"module:attribute"``, imported only when
used, so reading the names costs no torch import) and one line of help. The config's choices,
its did-you-mean errors and the CLI's help all come from here; adding a rule, a model or a
data set is its own file plus one line below.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Entry:
    target: str  # "dynalign.rules.fa:FeedbackAlignment"; "" where the name needs no code
    help: str


class Registry:
    """The names of one kind of choice (a config key's allowed values), in display order."""

    def __init__(self, key: str, entries: dict[str, Entry]):
        self.key = key
        self.entries = dict(entries)

    def names(self) -> tuple[str, ...]:
        return tuple(self.entries)

    def __contains__(self, name: object) -> bool:
        return name in self.entries

    def help(self, name: str) -> str:
        return self.entries[name].help

    def describe(self) -> str:
        """``name: help`` lines, for the CLI's help text."""
        return "; ".join(f"{n}: {e.help}" for n, e in self.entries.items())

    def add(self, name: str, target: str, help: str) -> None:
        """Register ``name`` (for code outside this package: a rule of your own, say)."""
        if name in self.entries:
            raise ValueError(f"{self.key}={name!r} is registered already; choose another name")
        self.entries[name] = Entry(target, help)

    def remove(self, name: str) -> None:
        self.entries.pop(name, None)

    def load(self, name: str) -> Any:
        """The implementation registered under ``name`` (imported now)."""
        module, _, attribute = self.entries[name].target.partition(":")
        return getattr(importlib.import_module(module), attribute)


RULES = Registry(
    "rule.name",
    {
        "bp": Entry("dynalign.rules.bp:Backprop", "backpropagation: the error goes down through W"),
        "fa": Entry(
            "dynalign.rules.fa:FeedbackAlignment",
            "feedback alignment (Lillicrap et al. 2016): a fixed random B",
        ),
        "dfa": Entry(
            "dynalign.rules.dfa:DirectFeedbackAlignment",
            "direct feedback alignment (Nøkland 2016): the output error reaches every layer "
            "through its own fixed random matrix",
        ),
        "usf": Entry(
            "dynalign.rules.sign_symmetry:UniformSignFeedback",
            "uniform sign-concordant feedback (Liao et al. 2016): B = sign(W), scaled",
        ),
        "brsf": Entry(
            "dynalign.rules.sign_symmetry:BatchRandomSignFeedback",
            "batchwise random-magnitude sign-concordant feedback: B = |M| sign(W), M redrawn "
            "every step",
        ),
        "frsf": Entry(
            "dynalign.rules.sign_symmetry:FixedRandomSignFeedback",
            "fixed random-magnitude sign-concordant feedback: B = |M| sign(W), M fixed",
        ),
        "kp": Entry(
            "dynalign.rules.kolen_pollack:KolenPollack",
            "Kolen-Pollack (Akrout et al. 2019): B gets W's update, both decay, B converges to W",
        ),
        "wm": Entry(
            "dynalign.rules.weight_mirror:WeightMirror",
            "weight mirror (Akrout et al. 2019): B learns W from the layer's response to noise",
        ),
        "frozen": Entry(
            "dynalign.rules.frozen:OutputOnly",
            "control, not a rule: only the output layer learns",
        ),
    },
)

MODELS = Registry(
    "model.kind",
    {
        "mlp": Entry("dynalign.models.mlp:MLP", "multilayer perceptron (depth x width)"),
        "convnet": Entry("dynalign.models.convnet:ConvNet", "conv blocks and a linear read-out"),
        "rnn": Entry("dynalign.models.rnn:RNN", "vanilla RNN trained by BPTT"),
        "autoencoder": Entry(
            "dynalign.models.autoencoder:SparseAutoencoder",
            "sparse autoencoder: two sigmoid hidden layers",
        ),
    },
)

DATASETS = Registry(
    "data.name",
    {
        "digits": Entry("dynalign.data:_load_digits", "scikit-learn's 8x8 digits (embedded)"),
        "mnist": Entry("dynalign.data:_load_idx_set", "MNIST IDX files from data.data_dir"),
        "fashion-mnist": Entry(
            "dynalign.data:_load_idx_set",
            "Fashion-MNIST IDX files (found in the Debian package's folder by itself)",
        ),
        "cifar10": Entry("dynalign.data:_load_cifar10", "CIFAR-10, python-version tarball"),
        "synthetic": Entry("dynalign.data:_load_synthetic", "a random teacher network"),
        "patches": Entry(
            "dynalign.data:_load_patches", "natural-image patches (sparse autoencoders)"
        ),
        "text": Entry("dynalign.data:_load_text", "character-level text (RNNs)"),
    },
)

BATCH_NORMS = Registry(
    "model.batch_norm",
    {
        "none": Entry("", "no batch norm"),
        "standard": Entry("dynalign.batchnorm:BatchNorm", "batch statistics, with gamma and beta"),
        "noaffine": Entry("dynalign.batchnorm:BatchNorm", "batch statistics, no gamma or beta"),
        "running_prev": Entry(
            "dynalign.batchnorm:RunningStatsBatchNorm",
            "running statistics of previous batches only",
        ),
        "running_incl": Entry(
            "dynalign.batchnorm:RunningStatsBatchNorm",
            "running statistics that include the current batch",
        ),
    },
)

ACTIVATIONS = Registry(
    "model.activation",
    {
        "relu": Entry("torch.nn:ReLU", "max(z, 0)"),
        "tanh": Entry("torch.nn:Tanh", "tanh(z)"),
        "sigmoid": Entry("torch.nn:Sigmoid", "1 / (1 + exp(-z))"),
        "mixed_relu": Entry(
            "dynalign.activations:MixedReLU",
            "each unit's fixed sign picks max(z, 0) or min(z, 0)",
        ),
    },
)

CONSTRAINTS = Registry(
    "constraint.sign",
    {
        "none": Entry("", "weights may change sign"),
        "synapse": Entry("dynalign.constraints:SignConstraint", "each weight keeps its sign"),
        "neuron": Entry(
            "dynalign.constraints:SignConstraint",
            "all outgoing weights of a neuron share one sign (Dale's law)",
        ),
    },
)

ALL = (RULES, MODELS, DATASETS, BATCH_NORMS, ACTIVATIONS, CONSTRAINTS)
