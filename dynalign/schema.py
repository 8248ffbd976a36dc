"""Every group and variable of a run store, declared once: the writer creates arrays from these
declarations, probes name the variables they fill, and test stores are laid out from them.

Schema versions: 1, written whole at the end of a run; 2, written while the run goes, with
committed lengths and checkpoints; 3 adds, per layer, the true gradient's norm, whether the
angles' reference was valid, the RMS of the layer's output, and the sign constraint's zero
crossings and pushes against zero, and lets B have its own shape (direct feedback alignment);
4 stores a B that the rule never changes (FA, DFA, the head-only control) once, as the one row
of its ``feedback`` array (attribute ``fixed``), instead of again in every snapshot: half of an
FA run's snapshot bytes were copies of it. Readers open all four; a variable a version lacks is
simply absent, and the reader shows a fixed B in every snapshot, as version 3 stored it.
"""

from __future__ import annotations

from dataclasses import dataclass

SCHEMA_VERSION = 4
#: versions this dynalign reads
READABLE_VERSIONS = (1, 2, 3, 4)


@dataclass(frozen=True)
class Variable:
    """One recorded variable: what it is called, which dims it has, what it means."""

    name: str
    per_layer: bool
    units: str
    long_name: str
    dtype: str = "float32"


# -- steps/: one row per optimiser step ------------------------------------------------------
STEP = Variable("step", False, "1", "optimiser step (1-based)", "int64")
STEP_SCALARS = (
    Variable("epoch", False, "1", "epoch the step belongs to (1-based)", "int64"),
    Variable("loss", False, "1", "training loss of the minibatch"),
    Variable("batch_accuracy", False, "1", "fraction of the minibatch classified correctly"),
    Variable("lr", False, "1", "learning rate used for the step"),
)
LAYER = Variable("layer", False, "1", "layer (module path)", "str")


def loss_term(name: str) -> Variable:
    """A model's extra loss term (``recon_loss``, ...), recorded per step."""
    return Variable(name, False, "1", name.replace("_", " "))


#: per-layer variables of a probe step (NaN on steps no probe ran)
LAYER_VARIABLES = {
    v.name: v
    for v in (
        Variable(
            "update_angle",
            True,
            "degree",
            "angle between the rule's weight update and the backprop gradient",
        ),
        Variable(
            "delta_angle",
            True,
            "degree",
            "angle between the error at the layer's output under the rule and under backprop",
        ),
        Variable("feedback_angle", True, "degree", "angle between forward weight W and feedback B"),
        Variable("gradient_norm", True, "1", "Frobenius norm of the backprop gradient of W"),
        Variable(
            "reference_valid",
            True,
            "1",
            "1 where the backprop gradient is above the numerical floor (angles defined), else 0",
        ),
        Variable(
            "activation_rms", True, "1", "root mean square of the layer's output over the batch"
        ),
        Variable("weight_norm", True, "1", "Frobenius norm of W after the step"),
        Variable("update_norm", True, "1", "Frobenius norm of the change applied to W in the step"),
        Variable("sign_flips", True, "count", "weights whose sign changed in the step"),
        Variable(
            "attempted_flips",
            True,
            "count",
            "weights a sign constraint stopped at zero in the step",
        ),
        Variable(
            "zero_crossings",
            True,
            "count",
            "non-zero weights the step tried to carry across zero (clipped to 0)",
        ),
        Variable(
            "zero_pushes",
            True,
            "count",
            "weights already at zero the step pushed to the wrong side again",
        ),
        Variable("zeroed_fraction", True, "1", "fraction of weights exactly zero after the step"),
    )
}
#: variables schema version 3 added (absent from older stores)
ADDED_IN_3 = ("gradient_norm", "reference_valid", "activation_rms", "zero_crossings", "zero_pushes")

# -- epochs/: one row per epoch ---------------------------------------------------------------
EPOCH = Variable("epoch", False, "1", "epoch (1-based)", "int64")
EPOCH_VARIABLES = (
    Variable("train_loss", False, "1", "loss on the whole training split"),
    Variable("train_accuracy", False, "1", "accuracy on the whole training split"),
    Variable("val_loss", False, "1", "loss on the validation split"),
    Variable("val_accuracy", False, "1", "accuracy on the validation split"),
    Variable("step", False, "1", "optimiser step at the end of the epoch", "int64"),
)

# -- snapshots/<layer>/: W and B every k steps -----------------------------------------------
SNAPSHOT_STEP = Variable(
    "snapshot_step", False, "1", "step the snapshot was taken after (0: initial)", "int64"
)
WEIGHT = Variable("weight", True, "1", "forward weight W")
FEEDBACK = Variable("feedback", True, "1", "feedback weight B")
#: attribute of a snapshot array that holds one row standing for every snapshot (a B the rule
#: never changes, schema 4): readers repeat it along ``snapshot``
FIXED = "fixed"
SIGN = Variable("sign", True, "1", "fixed sign of each weight (Dale's law)", "int8")
#: dims of a weight by its rank: (out, in) for Linear, (out, in, kh, kw) for Conv2d
WEIGHT_DIMS = ("out", "in", "kh", "kw")
#: dims of a feedback tensor whose shape is not W's (DFA: the network's output error to the
#: layer's input, (error, in) or, for a convolution, (error, in, height, width))
DIRECT_FEEDBACK_DIMS = ("error", "in", "height", "width")

# -- reconstructions/: autoencoder outputs for fixed probe inputs ----------------------------
RECONSTRUCTION_STEP = Variable("snapshot_step", False, "1", "step of the reconstruction", "int64")
RECONSTRUCTION = Variable("reconstruction", True, "1", "reconstruction of the probe inputs")
PROBE_INPUT = Variable("input", True, "1", "probe inputs (first validation samples)")
UNIT_SIGN = Variable("sign", True, "1", "fixed sign of each Mixed-ReLU unit", "int8")


def weight_dims(shape: tuple[int, ...]) -> tuple[str, ...]:
    return WEIGHT_DIMS[: len(shape)]


def feedback_dims(feedback_shape: tuple[int, ...], weight_shape: tuple[int, ...]) -> tuple:
    """B's dims: W's where the shapes agree, else DFA's (error, in, ...)."""
    if tuple(feedback_shape) == tuple(weight_shape):
        return weight_dims(weight_shape)
    return DIRECT_FEEDBACK_DIMS[: len(feedback_shape)]
