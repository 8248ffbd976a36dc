"""Run configuration: typed sections, TOML files, presets and ``section.key=value`` overrides.

Every value is validated here, before anything is built or written, so that a bad key or value
ends with one clear message instead of a traceback from deep inside a run.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import tomllib


class ConfigError(ValueError):
    """A configuration key, value or file that cannot be used; the message says how to fix it."""


@dataclass
class ModelConfig:
    kind: str = "mlp"  # mlp | convnet | rnn | autoencoder
    depth: int = 3  # hidden layers (mlp)
    width: int = 512  # hidden units (mlp, rnn, autoencoder)
    activation: str = "relu"  # relu | tanh | sigmoid | mixed_relu
    batch_norm: str = "none"  # none | standard | noaffine | running_prev | running_incl
    bn_momentum: float = 0.1
    excitatory_fraction: float = 0.5  # Mixed-ReLU: fraction of units with a positive sign
    channels: list[int] = field(default_factory=lambda: [16, 32])  # convnet blocks
    kernel_size: int = 3  # convnet
    code_size: int = 25  # autoencoder: units of the second (code) hidden layer
    sparsity_target: float = 0.05  # autoencoder: rho
    sparsity_weight: float = 3.0  # autoencoder: beta


@dataclass
class RuleConfig:
    name: str = "fa"  # bp | fa
    distribution: str = "uniform"  # uniform | normal (fa)
    scale: float = 1.0  # fa: width of B relative to the forward init


@dataclass
class ConstraintConfig:
    sign: str = "none"  # none | synapse | neuron  (Dale's law)
    excitatory_fraction: float = 0.8
    balance: bool = False  # scale inhibitory init magnitudes so each unit's mean input is 0


@dataclass
class DataConfig:
    name: str = "digits"  # digits | mnist | fashion-mnist | cifar10 | synthetic | patches | text
    n_train: int | None = None  # None: all that is left after the validation split
    n_val: int = 500
    data_dir: str | None = None
    scaling: str = "zscore"  # zscore (per feature, train stats) | unit ([0, 1]) | none
    seq_len: int = 32  # text: characters per training sequence
    text_path: str | None = None  # text: a corpus file (default: CPython's pydoc topics)
    patch_size: int = 8  # patches
    n_inputs: int = 20  # synthetic: input dimension
    n_classes: int = 10  # synthetic


@dataclass
class TrainConfig:
    epochs: int = 30
    batch_size: int = 100
    lr: float = 0.01
    momentum: float = 0.9
    optimizer: str = "sgd"  # sgd | adam
    weight_decay: float = 0.0
    grad_clip: float | None = None  # max global norm of the update, None: off
    seed: int = 0
    device: str = "cpu"
    threads: int | None = None  # CPU threads for torch; None: torch's default (all cores)


@dataclass
class ProbeConfig:
    every: int = 1  # per-layer probes every k steps (0: off)
    snapshot_every: int = 100  # W and B snapshots every k steps, plus first and last (0: off)
    reconstruction_every: int = 100  # autoencoders: probe reconstructions every k steps
    n_probe_inputs: int = 16


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    rule: RuleConfig = field(default_factory=RuleConfig)
    constraint: ConstraintConfig = field(default_factory=ConstraintConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    probes: ProbeConfig = field(default_factory=ProbeConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


CHOICES = {
    "model.kind": ("mlp", "convnet", "rnn", "autoencoder"),
    "model.activation": ("relu", "tanh", "sigmoid", "mixed_relu"),
    "model.batch_norm": ("none", "standard", "noaffine", "running_prev", "running_incl"),
    "rule.name": ("bp", "fa"),
    "rule.distribution": ("uniform", "normal"),
    "constraint.sign": ("none", "synapse", "neuron"),
    "data.name": ("digits", "mnist", "fashion-mnist", "cifar10", "synthetic", "patches", "text"),
    "train.optimizer": ("sgd", "adam"),
    "data.scaling": ("zscore", "unit", "none"),
}
POSITIVE = {
    "model.depth",
    "model.width",
    "model.kernel_size",
    "model.code_size",
    "data.n_val",
    "data.seq_len",
    "data.patch_size",
    "data.n_inputs",
    "data.n_classes",
    "train.epochs",
    "train.batch_size",
    "train.threads",
    "train.lr",
    "data.n_train",
    "train.grad_clip",
    "probes.n_probe_inputs",
}
NON_NEGATIVE = {
    "model.bn_momentum",
    "rule.scale",
    "train.momentum",
    "train.weight_decay",
    "train.seed",
    "probes.every",
    "probes.snapshot_every",
    "probes.reconstruction_every",
}
FRACTIONS = {
    "model.excitatory_fraction",
    "constraint.excitatory_fraction",
    "model.sparsity_target",
    "model.bn_momentum",
}


# short names for the keys changed most (also the `dynalign record` flags); any other key
# may be shortened to its last part where that is unambiguous (lr, epochs, depth, ...)
ALIASES = {
    "rule": "rule.name",
    "dataset": "data.name",
    "model": "model.kind",
    "data_dir": "data.data_dir",
    "device": "train.device",
    "seed": "train.seed",
}


def _sections() -> dict[str, type]:
    return {f.name: f.default_factory for f in dataclasses.fields(Config)}  # type: ignore[misc]


def keys() -> list[str]:
    """Every settable key, ``section.name``."""
    return [f"{s}.{f.name}" for s, cls in _sections().items() for f in dataclasses.fields(cls)]


def _suggest(key: str, options: list[str]) -> str:
    close = difflib.get_close_matches(key, options, n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def _coerce(key: str, value: Any, default: Any, annotation: str) -> Any:
    """Convert ``value`` to the field's type, or raise ConfigError naming the key."""
    optional = "None" in annotation
    if value is None or (optional and isinstance(value, str) and value.lower() in ("none", "null")):
        if optional:
            return None
        raise ConfigError(f"{key} cannot be empty; give a value like {default!r}")
    base = annotation.split("|")[0].strip()
    try:
        if base == "bool":
            if isinstance(value, str):
                if value.lower() in ("true", "1", "yes", "on"):
                    return True
                if value.lower() in ("false", "0", "no", "off"):
                    return False
                raise ValueError
            return bool(value)
        if base == "int":
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            if isinstance(value, bool):
                raise ValueError
            return int(value)
        if base == "float":
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if base.startswith("list"):
            if isinstance(value, str):
                value = [v for v in value.strip("[]").split(",") if v.strip()]
            return [int(v) for v in value]
        return str(value)
    except (TypeError, ValueError):
        raise ConfigError(
            f"{key}={value!r} is not a valid {base}; for example {key}={default!r}"
        ) from None


def _validate(key: str, value: Any) -> None:
    if key in CHOICES and value not in CHOICES[key]:
        raise ConfigError(
            f"{key}={value!r} is not one of: {', '.join(CHOICES[key])}"
            + _suggest(str(value), list(CHOICES[key]))
        )
    if value is None:
        return
    if key in POSITIVE and value <= 0:
        raise ConfigError(f"{key}={value!r} must be greater than 0")
    if key in NON_NEGATIVE and value < 0:
        raise ConfigError(f"{key}={value!r} must not be negative")
    if key in FRACTIONS and not 0 <= value <= 1:
        raise ConfigError(f"{key}={value!r} must lie between 0 and 1")
    if key == "model.channels" and (not value or min(value) <= 0):
        raise ConfigError(
            f"{key}={value!r} needs one or more positive channel counts, e.g. [16, 32]"
        )


def apply(config: Config, updates: dict[str, Any]) -> Config:
    """Return a copy of ``config`` with dotted-key ``updates`` applied and validated."""
    config = dataclasses.replace(
        config, **{s: dataclasses.replace(getattr(config, s)) for s in _sections()}
    )
    valid = keys()
    for key, value in updates.items():
        key = ALIASES.get(key, key)
        if key not in valid:
            if "." not in key:
                matches = [k for k in valid if k.endswith("." + key)]
                if len(matches) == 1:
                    key = matches[0]
            if key not in valid:
                raise ConfigError(f"unknown config key {key!r}{_suggest(key, valid)}")
        section, name = key.split(".")
        sec = getattr(config, section)
        fdef = {f.name: f for f in dataclasses.fields(sec)}[name]
        value = _coerce(key, value, getattr(sec, name), str(fdef.type))
        _validate(key, value)
        setattr(sec, name, value)
    return config


def flatten(tree: dict[str, Any], where: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 0.1}}`` -> ``{"train.lr": 0.1}``."""
    flat: dict[str, Any] = {}
    for k, v in tree.items():
        key = f"{where}.{k}" if where else k
        if isinstance(v, dict):
            flat.update(flatten(v, key))
        else:
            flat[key] = v
    return flat


def parse_assignments(pairs: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """``["train.lr=0.1"]`` -> ``{"train.lr": "0.1"}`` (typed later by :func:`apply`)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(
                f"--set {pair!r} must look like section.key=value, e.g. train.lr=0.05"
            )
        out[key.strip()] = value.strip()
    return out


def load_toml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist; pass an existing .toml file")
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"config file {str(path)!r} is not valid TOML: {err}") from None
    data.pop("description", None)
    return flatten(data)


# ---------------------------------------------------------------------------- presets


def preset_names() -> list[str]:
    files = resources.files("dynalign") / "presets"
    return sorted(p.name[:-5] for p in files.iterdir() if p.name.endswith(".toml"))


def preset_description(name: str) -> str:
    with (resources.files("dynalign") / "presets" / f"{name}.toml").open("rb") as fh:
        return str(tomllib.load(fh).get("description", ""))


def load_preset(name: str) -> dict[str, Any]:
    names = preset_names()
    if name not in names:
        raise ConfigError(
            f"unknown preset {name!r}{_suggest(name, names)}; `dynalign presets` lists them"
        )
    path = resources.files("dynalign") / "presets" / f"{name}.toml"
    with path.open("rb") as fh:
        data = tomllib.load(fh)
    data.pop("description", None)
    return flatten(data)


def build_config(
    preset: str | None = None,
    config_file: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
) -> Config:
    """Defaults, then a preset, then a TOML file, then overrides: later ones win."""
    config = Config()
    if preset:
        config = apply(config, load_preset(preset))
    if config_file:
        config = apply(config, load_toml(config_file))
    if overrides:
        config = apply(config, overrides)
    check_consistency(config)
    return config


def check_consistency(config: Config) -> None:
    """Combinations of otherwise valid values that cannot run together."""
    m = config.model
    if m.kind == "rnn" and m.batch_norm != "none":
        raise ConfigError(
            "model.batch_norm is not available for rnn models; set model.batch_norm=none"
        )
    if m.kind == "autoencoder" and config.data.name == "text":
        raise ConfigError("an autoencoder needs image data; set data.name=patches or digits")
    if config.data.name == "text" and m.kind != "rnn":
        raise ConfigError("text data needs a recurrent model; set model.kind=rnn")


def from_json(text: str) -> Config:
    """Rebuild a Config from the JSON a store keeps in its ``config`` attribute."""
    return apply(Config(), flatten(json.loads(text)))
