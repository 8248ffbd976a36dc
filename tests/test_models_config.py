"""Models build from their own config section: every kind of ``registry.MODELS`` declares the
``[model]`` keys it reads, builds and sizes itself from them, and a config that sets any other
model key away from its default is refused with the key, the kind and the fix. The names of
batch-norm variants and activations come from their registries, and every shipped preset and
finding spec still builds a config."""

from __future__ import annotations

import dataclasses
from importlib import resources

import pytest
import torch
from torch import nn

from dynalign import config as config_module
from dynalign.analyses.reproduce import finding_numbers
from dynalign.batchnorm import BATCH_NORM_KINDS, make_batch_norm
from dynalign.config import (
    Config,
    ConfigError,
    DataConfig,
    ModelConfig,
    apply,
    build_config,
    check_consistency,
    load_preset,
    preset_names,
)
from dynalign.models import build, estimate_bytes, model_class
from dynalign.models.base import Network
from dynalign.models.mlp import make_activation
from dynalign.registry import ACTIVATIONS, BATCH_NORMS, MODELS, Entry
from dynalign.spec import load_spec

KINDS = MODELS.names()
#: data each kind trains on, and the shape of one sample and the outputs it builds for
DATA = {"mlp": "digits", "convnet": "digits", "rnn": "text", "autoencoder": "patches"}
SHAPES = {
    "mlp": ((8, 8), 10),
    "convnet": ((1, 8, 8), 10),
    "rnn": ((12,), 7),
    "autoencoder": ((8, 8), 0),
}
#: a valid value other than the default for every model key but ``kind``
OTHER = {
    "depth": 2,
    "width": 16,
    "activation": "tanh",
    "batch_norm": "standard",
    "bn_momentum": 0.5,
    "excitatory_fraction": 0.25,
    "channels": [4],
    "kernel_size": 5,
    "code_size": 7,
    "sparsity_target": 0.2,
    "sparsity_weight": 1.0,
}
MODEL_KEYS = [f.name for f in dataclasses.fields(ModelConfig) if f.name != "kind"]


def config_for(kind: str, **model: object) -> Config:
    overrides = {"model.kind": kind, "data.name": DATA[kind]}
    overrides.update({f"model.{k}": v for k, v in model.items()})
    return build_config(overrides=overrides)


class Recording:
    """A ModelConfig that notes which keys are read."""

    def __init__(self, section: ModelConfig):
        self._section, self.read = section, set()

    def __getattr__(self, name: str):
        self.read.add(name)
        return getattr(self._section, name)


def test_every_kind_and_key_is_covered():
    assert set(DATA) == set(KINDS) == set(SHAPES)
    assert sorted(OTHER) == sorted(MODEL_KEYS)
    defaults = ModelConfig()
    assert all(OTHER[k] != getattr(defaults, k) for k in MODEL_KEYS)


@pytest.mark.parametrize("kind", KINDS)
def test_kind_declares_real_keys(kind):
    model = model_class(kind)
    assert issubclass(model, Network) and model is MODELS.load(kind)
    assert model.reads, kind
    assert set(model.reads) <= set(MODEL_KEYS), kind
    assert len(set(model.reads)) == len(model.reads)
    assert set(model.activations) <= set(ACTIVATIONS.names())


@pytest.mark.parametrize("kind", KINDS)
def test_kind_builds_from_its_section_through_the_registry(kind):
    config = config_for(kind, **{k: OTHER[k] for k in model_class(kind).reads})
    shape, n_outputs = SHAPES[kind]
    net = build(config, shape, n_outputs, torch.Generator().manual_seed(0))
    assert type(net) is MODELS.load(kind)
    x = torch.randint(0, n_outputs, (3, *shape)) if kind == "rnn" else torch.rand(3, *shape)
    assert torch.isfinite(net(x)).all()


@pytest.mark.parametrize("kind", KINDS)
def test_kind_reads_only_what_it_declares(kind):
    model = model_class(kind)
    section = Recording(config_for(kind).model)
    shape, n_outputs = SHAPES[kind]
    model.from_config(section, shape, n_outputs, torch.Generator().manual_seed(0))
    model.size(section, shape, n_outputs)
    model.what_to_lower(section)
    assert section.read <= set(model.reads), kind


@pytest.mark.parametrize("kind", KINDS)
def test_defaults_and_read_keys_pass(kind):
    config_for(kind)  # only the kind set
    config_for(kind, **{k: OTHER[k] for k in model_class(kind).reads})
    defaults = ModelConfig()
    config_for(kind, **{k: getattr(defaults, k) for k in MODEL_KEYS})  # defaults, set explicitly


@pytest.mark.parametrize(
    ("kind", "key"),
    [(kind, key) for kind in KINDS for key in MODEL_KEYS if key not in model_class(kind).reads],
)
def test_a_changed_unread_key_is_refused(kind, key):
    with pytest.raises(ConfigError) as err:
        config_for(kind, **{key: OTHER[key]})
    message = str(err.value)
    assert f"remove model.{key} (now " in message
    assert f"the {kind} model does not read it" in message
    assert f"set model.{key}=" in message  # or back to its default


def test_all_unread_keys_are_named_in_one_message():
    with pytest.raises(ConfigError) as err:
        config_for("autoencoder", depth=5, activation="sigmoid", batch_norm="noaffine")
    message = str(err.value)
    assert message.startswith(
        "remove model.depth (now 5), model.activation (now sigmoid) and model.batch_norm "
        "(now noaffine), or set model.depth=3, model.activation=relu and model.batch_norm=none: "
        "the autoencoder model does not read them (it reads model.width, model.code_size"
    )


def test_a_kind_refuses_an_activation_it_does_not_support():
    with pytest.raises(ConfigError, match="'mixed_relu' is not available for rnn models"):
        config_for("rnn", activation="mixed_relu")


def test_rnn_activations_are_defined_once():
    from dynalign.models import rnn

    assert rnn.RNN_ACTIVATIONS is config_module.RNN_ACTIVATIONS
    assert rnn.RNN.activations is config_module.RNN_ACTIVATIONS


# ------------------------------------------------------------- the next model: one file, one line


class Tiny(Network):
    """A model registered by this test only: a linear read-out that reads nothing but width."""

    reads = ("width",)

    def __init__(self, n_inputs: int, n_outputs: int, width: int):
        super().__init__()
        self.fc = nn.Linear(n_inputs, n_outputs)
        self.width = width

    @classmethod
    def from_config(cls, model_config, input_shape, n_outputs, generator=None):
        return cls(int(torch.tensor(input_shape).prod()), n_outputs, model_config.width)

    @classmethod
    def size(cls, model_config, input_shape, n_outputs):
        n_in = int(torch.tensor(input_shape).prod())
        return (n_in + 1) * n_outputs, n_in + n_outputs

    def forward(self, x):
        return self.fc(x.flatten(1))


def test_a_new_kind_needs_only_its_class_and_a_registry_line(monkeypatch):
    monkeypatch.setitem(MODELS.entries, "tiny", Entry(f"{__name__}:Tiny", "a test model"))
    config = Config(model=ModelConfig(kind="tiny", width=7), data=DataConfig(name="digits"))
    check_consistency(config)
    net = build(config, (8, 8), 10, torch.Generator().manual_seed(0))
    assert isinstance(net, Tiny) and net.width == 7
    assert estimate_bytes(config, (8, 8), 10) > 0
    config.model.depth = 4
    with pytest.raises(ConfigError, match="remove model.depth .* the tiny model does not read it"):
        check_consistency(config)


# ------------------------------------------------------------------- memory estimates unchanged

#: estimate_bytes before the sizes moved onto the model classes (per-kind branches then)
ESTIMATES = [
    ("fc3-fa", {}, (8, 8), 10, 41544216),
    ("fc8-fa-bn", {}, (1, 28, 28), 10, 141117976),
    ("dale-neuron-bp", {"train.optimizer": "adam"}, (3, 32, 32), 10, 132794904),
    ("conv-fa", {}, (1, 8, 8), 10, 50346520),
    (
        "conv-bp-bn",
        {"data.name": "cifar10", "model.channels": [32, 64, 128]},
        (3, 32, 32),
        10,
        1886889712,
    ),
    ("conv-bp", {"model.kernel_size": 5}, (28, 28), 10, 615350512),
    ("rnn-fa", {}, (32,), 97, 166024348),
    (
        "rnn-bp",
        {"data.name": "mnist", "model.width": 64, "train.momentum": 0.0, "train.grad_clip": None},
        (1, 28, 28),
        10,
        45828040,
    ),
    ("sae-bp", {}, (64,), 0, 4347292),
    (
        "sae-fa",
        {"model.width": 400, "model.code_size": 50, "train.optimizer": "sgd"},
        (1, 12, 12),
        0,
        14199032,
    ),
]


@pytest.mark.parametrize(("preset", "overrides", "shape", "n_outputs", "expected"), ESTIMATES)
def test_estimate_bytes_is_unchanged(preset, overrides, shape, n_outputs, expected):
    config = apply(apply(Config(), load_preset(preset)), overrides)
    assert estimate_bytes(config, shape, n_outputs) == expected


def test_too_large_names_what_to_lower():
    config = config_for("autoencoder", width=10**8)
    with pytest.raises(ConfigError, match=r"the autoencoder model .*lower model.width \(now"):
        build(config, (8, 8), 0, torch.Generator())


# ------------------------------------------------------------ shipped presets and finding specs


@pytest.mark.parametrize("name", preset_names())
def test_every_preset_builds_a_config_and_its_model_section_is_read(name):
    config = build_config(preset=name)
    model = model_class(config.model.kind)
    for key in load_preset(name):
        section, _, field = key.partition(".")
        if section == "model" and field != "kind":
            assert field in model.reads, f"{name} sets model.{field}, unread by {model.__name__}"


@pytest.mark.parametrize("number", finding_numbers())
@pytest.mark.parametrize("scale", [None, "quick", "full"])
def test_every_finding_spec_builds_its_configs(number, scale):
    with resources.as_file(
        resources.files("dynalign") / "findings" / f"finding-{number}.toml"
    ) as path:
        spec = load_spec(path, scale=scale)
    assert spec.points
    for point in spec.points:
        check_consistency(point.config)


# -------------------------------------------------------- batch norms and activations by registry


def test_batch_norm_kinds_are_the_registrys():
    assert set(BATCH_NORM_KINDS) == set(BATCH_NORMS.names()) - {"none"}
    for kind in BATCH_NORM_KINDS:
        bn = make_batch_norm(kind, 3, 0.2)
        assert isinstance(bn, BATCH_NORMS.load(kind)) and bn.momentum == 0.2
    assert make_batch_norm("standard", 3).affine and not make_batch_norm("noaffine", 3).affine
    assert make_batch_norm("running_incl", 3).include_current
    assert not make_batch_norm("running_prev", 3).include_current


def test_unknown_batch_norm_suggests_a_name():
    with pytest.raises(ConfigError, match="unknown batch norm 'noafine'; did you mean 'noaffine'"):
        make_batch_norm("noafine", 3)
    with pytest.raises(ConfigError, match="set model.batch_norm to none or one of standard"):
        make_batch_norm("none", 3)


@pytest.mark.parametrize("name", ACTIVATIONS.names())
def test_every_registered_activation_builds(name):
    act = make_activation(name, 5, torch.Generator().manual_seed(0), 0.6)
    assert isinstance(act, ACTIVATIONS.load(name))
    assert act(torch.randn(2, 5)).shape == (2, 5)


def test_unknown_activation_suggests_a_name():
    with pytest.raises(ConfigError, match="unknown activation 'tahn'; did you mean 'tanh'"):
        make_activation("tahn", 4)
