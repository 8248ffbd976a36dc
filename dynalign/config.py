"""Run configuration: typed sections, TOML files, presets and ``section.key=value`` overrides.

Every value is validated here, before anything is built or written, so that a bad key or value
ends with one clear message instead of a traceback from deep inside a run.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import tomllib

from . import registry as registries


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
    name: str = "fa"  # one of dynalign.registry.RULES
    distribution: str = "uniform"  # uniform | normal: how random feedback is drawn
    scale: float = 1.0  # random feedback: width of B relative to the forward init
    mirror_lr: float = 0.01  # wm: learning rate (and decay) of B's noise-driven update
    mirror_samples: int = 32  # wm: noise samples per layer and step
    mirror_every: int = 1  # wm: mirror after every k-th optimiser step (1: after every step)


@dataclass
class ConstraintConfig:
    sign: str = "none"  # none | synapse | neuron  (Dale's law)
    excitatory_fraction: float = 0.8
    balance: bool = False  # scale inhibitory init magnitudes so each unit's mean input is 0
    reset_momentum: bool = False  # clear the optimiser state of a weight the constraint clips


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
    seed: int = 0  # 0 .. 2**32 - 1 (SEED_MAX): torch and numpy generators take no more
    device: str = "cpu"
    # CPU threads for torch; None: torch's default (all cores). One is fastest as soon as
    # another job keeps a core busy, and nearly as fast on an idle machine
    threads: int | None = 1


@dataclass
class ProbeConfig:
    every: int = 1  # per-layer probes every k steps (0: off)
    # W and B snapshots every k steps, plus the first and last (0: off); None: log-spaced over
    # the run, as many as snapshot_budget allows (dense early, sparse late)
    snapshot_every: int | None = None
    snapshot_budget: float = 40.0  # megabytes of W and B snapshots per run (without snapshot_every)
    snapshot_dtype: str = "float32"  # float32 | float16 (half the bytes, ~3 significant digits)
    reconstruction_every: int = 100  # autoencoders: probe reconstructions every k steps
    n_probe_inputs: int = 16
    checkpoint_every: int | None = None  # steps between checkpoints; None: at epoch ends, 0: off
    checkpoint_seconds: float = 30.0  # epoch-end checkpoints at most this often (0: every epoch)


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


#: keys whose values come from a fixed list; the registries' keys (rule.name, model.kind, ...)
#: are looked up in their registry at the time of checking (see ``choices``)
CHOICES = {
    "rule.distribution": ("uniform", "normal"),
    "train.optimizer": ("sgd", "adam"),
    "data.scaling": ("zscore", "unit", "none"),
    "probes.snapshot_dtype": ("float32", "float16"),
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
    "rule.mirror_lr",
    "rule.mirror_samples",
    "rule.mirror_every",
    "probes.snapshot_budget",
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
    "probes.checkpoint_every",
    "probes.checkpoint_seconds",
}
#: the smallest value some keys allow (a classification needs two classes)
MINIMUM = {"data.n_classes": 2}
#: seeds must fit torch's and numpy's generators; the trainer also uses seed + 1 and seed + 2
SEED_MAX = 2**32 - 1
#: a config file is a few lines of TOML; anything larger is the wrong file
MAX_CONFIG_BYTES = 1 << 20
DEVICE_PATTERN = re.compile(r"cpu|cuda(:\d+)?")
#: the image data sets (a convnet's and a sequential-image RNN's inputs)
IMAGE_DATA = ("digits", "mnist", "fashion-mnist", "cifar10")
#: data that comes with dynalign or is generated: nothing to find in a data directory
EMBEDDED_DATA = ("digits", "synthetic", "patches", "text")
RNN_ACTIVATIONS = ("tanh", "relu", "sigmoid")
#: training-set sizes when data.n_train is unset: samples in the standard files (digits,
#: mnist, fashion-mnist, cifar10) less the validation split, or the generated default
FULL_SIZES = {"digits": 1797, "mnist": 60000, "fashion-mnist": 60000, "cifar10": 50000}
GENERATED_N_TRAIN = {"synthetic": 1000, "patches": 10000}
#: the [data] keys each data set reads besides name, n_train and n_val
DATA_READS = {
    "digits": ("scaling",),
    **{name: ("scaling", "data_dir") for name in ("mnist", "fashion-mnist", "cifar10")},
    "synthetic": ("scaling", "n_inputs", "n_classes"),
    "patches": ("patch_size",),
    "text": ("seq_len", "text_path"),
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


def _int(value: Any) -> int:
    """An integer from an int, an integral float or its text; ValueError for anything else."""
    if isinstance(value, bool):
        raise ValueError
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError
        return int(value)
    if isinstance(value, str):
        return int(value.strip())
    if isinstance(value, int):
        return value
    raise ValueError


def _coerce(key: str, value: Any, default: Any, annotation: str) -> Any:
    """Convert ``value`` to the field's type, or raise ConfigError naming the key.

    Text (from ``--set``) is parsed; a typed value (from TOML or JSON) must already have the
    field's type, so ``kind = 3`` or ``balance = 2`` in a file is refused, not reinterpreted.
    """
    optional = "None" in annotation
    if value is None or (optional and isinstance(value, str) and value.lower() in ("none", "null")):
        if optional:
            return None
        raise ConfigError(f"{key} cannot be empty; give a value like {key}={default!r}")
    base = annotation.split("|")[0].strip()
    example = f"e.g. {key}={default!r}" if default is not None else f"e.g. {key}=none"
    try:
        if base == "bool":
            if isinstance(value, str):
                if value.lower() in ("true", "1", "yes", "on"):
                    return True
                if value.lower() in ("false", "0", "no", "off"):
                    return False
            elif isinstance(value, bool):
                return value
            raise ValueError
        if base == "int":
            return _int(value)
        if base == "float":
            if isinstance(value, bool) or not isinstance(value, (int, float, str)):
                raise ValueError
            number = float(value)
            if not math.isfinite(number):
                raise ConfigError(
                    f"{key}={value!r} is not a finite number; give a finite value, {example}"
                )
            return number
        if base.startswith("list"):
            if isinstance(value, str):
                value = [v for v in value.strip().strip("[]").split(",") if v.strip()]
            if not isinstance(value, (list, tuple)):
                raise ValueError
            return [_int(v) for v in value]
        if not isinstance(value, str):
            raise ValueError
        if not value.strip():
            raise ConfigError(
                f"{key} is an empty string; give a value, {example}"
                + (f" (or {key}=none)" if optional and default is not None else "")
            )
        return value
    except (TypeError, ValueError, OverflowError) as err:
        if isinstance(err, ConfigError):
            raise
        raise ConfigError(f"{key}={value!r} is not a valid {base}; give one, {example}") from None


def choices(key: str) -> tuple[str, ...] | None:
    """The values ``key`` allows, or None where any value of its type does."""
    for registry in registries.ALL:
        if registry.key == key:
            return registry.names()
    return CHOICES.get(key)


def _validate(key: str, value: Any) -> None:
    allowed = choices(key)
    if allowed is not None and value not in allowed:
        raise ConfigError(
            f"{key}={value!r} is not one of: {', '.join(allowed)}"
            + _suggest(str(value), list(allowed))
            + f"; set {key} to one of them"
        )
    if value is None:
        return
    if key in POSITIVE and value <= 0:
        raise ConfigError(f"{key}={value!r} must be greater than 0; give a positive value")
    if key in NON_NEGATIVE and value < 0:
        raise ConfigError(f"{key}={value!r} must not be negative; give 0 or more")
    if key in MINIMUM and value < MINIMUM[key]:
        raise ConfigError(f"{key}={value!r} is too small; give {MINIMUM[key]} or more")
    if key in FRACTIONS and not 0 <= value <= 1:
        raise ConfigError(f"{key}={value!r} must lie between 0 and 1; give a fraction like 0.5")
    if key == "train.seed" and value > SEED_MAX:
        raise ConfigError(
            f"train.seed={value} is too large; give a seed from 0 to {SEED_MAX} (2**32 - 1)"
        )
    if key == "train.device" and not DEVICE_PATTERN.fullmatch(value):
        raise ConfigError(f"train.device={value!r} is not a device; use cpu, cuda or cuda:N")
    if key == "model.channels" and (not value or min(value) <= 0):
        raise ConfigError(
            f"{key}={value!r} needs one or more positive channel counts; set e.g. "
            "model.channels=[16, 32]"
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
                raise ConfigError(
                    f"unknown config key {key!r}{_suggest(key, valid)}; use section.key with "
                    f"a section among {', '.join(_sections())} (README: Configuration)"
                )
        section, name = key.split(".")
        sec = getattr(config, section)
        setattr(sec, name, _checked(key, value, sec))
    return config


def _checked(key: str, value: Any, section: Any) -> Any:
    """``value`` typed and validated for ``key`` of ``section`` (whose value names the example)."""
    name = key.split(".")[1]
    fdef = {f.name: f for f in dataclasses.fields(section)}[name]
    value = _coerce(key, value, getattr(section, name), str(fdef.type))
    _validate(key, value)
    return value


def check_value(key: str, value: Any) -> Any:
    """One ``section.name`` value typed and validated as a config would take it (a CLI flag's
    value, so that a flag and ``--set`` give one message for one mistake)."""
    return _checked(key, value, _sections()[key.split(".")[0]]())


def key_type(key: str) -> str:
    """The type of ``section.name`` without its None: int, float, bool, str or list[int]."""
    section, name = key.split(".")
    fdef = {f.name: f for f in dataclasses.fields(_sections()[section])}[name]
    return str(fdef.type).split("|")[0].strip()


def default_value(key: str) -> Any:
    """The default value of ``section.name``."""
    section, name = key.split(".")
    return getattr(_sections()[section](), name)


def value_range(key: str) -> tuple[float | None, float | None, bool]:
    """(lowest, highest, lowest excluded) of the numbers ``key`` allows, as ``_validate``
    checks them; None where there is no bound."""
    if key in FRACTIONS:
        return 0, 1, False
    if key in MINIMUM:
        return MINIMUM[key], None, False
    highest = SEED_MAX if key == "train.seed" else None
    if key in POSITIVE:
        return 0, highest, True
    if key in NON_NEGATIVE:
        return 0, highest, False
    return None, highest, False


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


def describe_path(path: Path, want: str = "file") -> str:
    """What is at ``path`` when it is not the regular file (or the directory) wanted: the
    middle of an error message, "does not exist", "is a directory", ..."""
    if not path.exists():
        return "does not exist"
    if want == "directory":
        return "is a file, not a directory" if path.is_file() else "is not a directory"
    if path.is_dir():
        return "is a directory"
    return "is not a regular file (a device, pipe or socket)"


def load_toml(path: str | Path) -> dict[str, Any]:
    """The flattened keys of a TOML config file, every top-level entry a known section."""
    path = Path(path).expanduser()
    what = f"config file {str(path)!r}"
    if not path.is_file():
        raise ConfigError(f"{what} {describe_path(path)}; pass a .toml file to --config")
    try:
        size = path.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise ConfigError(
                f"{what} is {size} bytes, too large for a config; pass a .toml file of "
                "[section] tables to --config"
            )
        raw = path.read_bytes()
    except OSError as err:
        raise ConfigError(
            f"cannot read {what}: {err.strerror or err}; check it is readable"
        ) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(
            f"{what} is not UTF-8 text (byte {raw[err.start]:#04x} at offset {err.start}); "
            "pass a TOML text file to --config"
        ) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{what} is not valid TOML: {err}; fix that line") from None
    data.pop("description", None)
    sections = _sections()
    for name, value in data.items():
        if name not in sections:
            raise ConfigError(
                f"{what} has an unknown section [{name}]{_suggest(name, list(sections))}; "
                f"use sections among {', '.join(sections)}"
            )
        if not isinstance(value, dict):
            raise ConfigError(
                f"{what}: {name} = {value!r} is not a section; write [{name}] and key = value "
                "lines below it"
            )
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
    if preset is not None:  # an empty name is refused as unknown, not ignored
        config = apply(config, load_preset(preset))
    if config_file is not None:
        config = apply(config, load_toml(config_file))
    if overrides:
        config = apply(config, overrides)
    check_consistency(config)
    return config


def check_consistency(config: Config) -> None:
    """Combinations of otherwise valid values that cannot run together, or not on this machine."""
    m, d, t = config.model, config.data, config.train
    if m.kind == "autoencoder" and d.name == "text":
        raise ConfigError("an autoencoder needs image data; set data.name=patches or digits")
    if d.name == "text" and m.kind != "rnn":
        raise ConfigError("text data needs a recurrent model; set model.kind=rnn")
    if d.name == "patches" and m.kind != "autoencoder":
        raise ConfigError(
            "patches data has no labels to classify; set model.kind=autoencoder, or choose "
            f"labelled data ({', '.join(IMAGE_DATA)}, synthetic)"
        )
    if m.kind == "convnet" and d.name not in IMAGE_DATA:
        raise ConfigError(
            f"a convnet needs image data, but {d.name} gives flat vectors; set data.name to "
            f"one of {', '.join(IMAGE_DATA)}, or model.kind=mlp"
        )
    if m.kind == "rnn" and d.name not in ("text", *IMAGE_DATA):
        raise ConfigError(
            f"an rnn reads text or images row by row, not {d.name} data; set data.name to text "
            f"or one of {', '.join(IMAGE_DATA)}, or model.kind=mlp"
        )
    problem = model_section_problem(m)
    if problem:
        raise ConfigError(problem)
    if d.data_dir is not None and d.name in EMBEDDED_DATA:
        fix = "set data.text_path for a corpus file" if d.name == "text" else "leave it out"
        raise ConfigError(
            f"data.name={d.name} is embedded and needs no --data-dir (data.data_dir="
            f"{d.data_dir!r}); {fix}"
        )
    if d.text_path is not None and d.name != "text":
        raise ConfigError(
            f"data.text_path is only read for data.name=text, not {d.name}; set "
            "data.name=text or leave data.text_path out"
        )
    if d.name == "synthetic" and d.scaling == "unit":
        raise ConfigError(
            "data.scaling=unit needs a format maximum, which synthetic data has not; use "
            "data.scaling=zscore or none"
        )
    c = config.constraint
    if c.sign != "none" and c.balance and not 0 < c.excitatory_fraction < 1:
        raise ConfigError(
            "constraint.balance needs both excitatory and inhibitory weights, but "
            f"constraint.excitatory_fraction={c.excitatory_fraction}; choose a fraction strictly "
            "between 0 and 1, or set constraint.balance=false"
        )
    problem = registries.RULES.load(config.rule.name).check(config)
    if problem:
        raise ConfigError(problem)
    _check_last_batch(config)
    cores = os.cpu_count() or 1
    if t.threads is not None and t.threads > cores:
        raise ConfigError(
            f"train.threads={t.threads} exceeds this machine's {cores} CPU cores; lower "
            f"train.threads to at most {cores}"
        )


def model_section_problem(m: ModelConfig) -> str | None:
    """What is wrong with the [model] section for its kind, or None: a key the kind does not
    read, set away from its default (it would be silently ignored), or an activation the kind
    does not support. The kind's class (``registry.MODELS``) declares both, in ``reads`` and
    ``activations``; it is imported here."""
    if m.kind not in registries.MODELS:
        kinds = list(registries.MODELS.names())
        return (
            f"model.kind={m.kind!r} is not one of: {', '.join(kinds)}"
            f"{_suggest(str(m.kind), kinds)}; set model.kind to one of them"
        )
    model = registries.MODELS.load(m.kind)
    defaults = ModelConfig()
    unread = [
        f.name
        for f in dataclasses.fields(m)
        if f.name != "kind"
        and f.name not in model.reads
        and getattr(m, f.name) != getattr(defaults, f.name)
    ]
    if unread:
        now = [f"model.{k} (now {_show(getattr(m, k))})" for k in unread]
        reset = [f"model.{k}={_show(getattr(defaults, k))}" for k in unread]
        it = "it" if len(unread) == 1 else "them"
        reads = ", ".join(f"model.{k}" for k in model.reads) or "only model.kind"
        return (
            f"remove {_and(now)}, or set {_and(reset)}: the {m.kind} model does not read "
            f"{it} (it reads {reads})"
        )
    if "activation" in model.reads and m.activation not in model.activations:
        return (
            f"model.activation={m.activation!r} is not available for {m.kind} models; use one "
            f"of {', '.join(model.activations)}"
        )
    return None


def keys_read(sections: dict[str, Any]) -> dict[str, Any]:
    """A config as a store keeps it (section -> key -> value) without the keys its run does not
    read: another model kind's (the kind's class declares ``reads``), another data set's
    (``DATA_READS``) and a sign constraint's where there is none. A section of an unknown
    kind keeps every key."""
    shown = dict(sections)
    model, data, constraint = (sections.get(s) for s in ("model", "data", "constraint"))
    if isinstance(model, dict) and model.get("kind") in registries.MODELS:
        reads = ("kind", *registries.MODELS.load(model["kind"]).reads)
        shown["model"] = {k: model[k] for k in reads if k in model}
    if isinstance(data, dict) and data.get("name") in DATA_READS:
        reads = ("name", "n_train", "n_val", *DATA_READS[data["name"]])
        shown["data"] = {k: data[k] for k in reads if k in data}
    if isinstance(constraint, dict) and constraint.get("sign") == "none":
        shown["constraint"] = {"sign": "none"}
    return shown


def _show(value: Any) -> str:
    """A config value as ``--set`` takes it: none, text unquoted, lists as [a, b]."""
    if value is None:
        return "none"
    return str(value).lower() if isinstance(value, bool) else str(value)


def _and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def _check_last_batch(config: Config) -> None:
    """Batch norm in an MLP cannot normalise a minibatch of one sample (the last of an epoch).

    Checked where the training-set size is known from the config: data.n_train, or the
    standard size of a data set read whole.
    """
    m, d, t = config.model, config.data, config.train
    if m.kind != "mlp" or m.batch_norm == "none":
        return
    if t.batch_size < 2:
        raise ConfigError(
            f"model.batch_norm={m.batch_norm} needs minibatches of 2 or more; set "
            "train.batch_size to 2 or more"
        )
    n_train = d.n_train
    if n_train is None and d.data_dir is None and d.name in FULL_SIZES:
        n_train = FULL_SIZES[d.name] - d.n_val
    n_train = GENERATED_N_TRAIN.get(d.name) if n_train is None else n_train
    if n_train is not None and n_train > 1 and n_train % t.batch_size == 1:
        raise ConfigError(
            f"model.batch_norm={m.batch_norm} cannot normalise the last minibatch of each "
            f"epoch: {n_train} training samples leave 1 after batches of train.batch_size="
            f"{t.batch_size}; change train.batch_size or data.n_train"
        )


def from_json(text: str) -> Config:
    """Rebuild a Config from the JSON a store keeps in its ``config`` attribute."""
    return apply(Config(), flatten(json.loads(text)))
