"""The ``dynalign`` command: record runs, inspect stores, list presets, analyse and report."""

from __future__ import annotations

import gc
import importlib
import json
import math
import sys
import time

import click
from click.core import ParameterSource

from dynalign.config import (
    ConfigError,
    build_config,
    check_value,
    default_value,
    key_type,
    keys_read,
    parse_assignments,
    preset_description,
    preset_names,
    value_range,
)
from dynalign.registry import DATASETS, MODELS, RULES

#: commands whose modules import xarray, matplotlib or dask, imported when one is run or asked
#: for its help (so that `dynalign --help`, `presets` and `record` start at once), each with the
#: line the command list shows for it
LAZY_COMMANDS = {
    "analyze": (
        "dynalign.cli.analyze:analyze",
        "Analyse run stores or a study: tables, JSON, netCDF.",
    ),
    "report": (
        "dynalign.cli.analyze:report",
        "Write an HTML (and PDF) report of run stores or a study.",
    ),
    "reproduce": (
        "dynalign.cli.study:reproduce",
        "Reproduce the study's findings, a verdict for each.",
    ),
    "sweep": ("dynalign.cli.study:sweep", "Run every arm x seed of a study spec, one store each."),
}


def fail(message: str) -> None:
    """One line on stderr and exit code 2: the user's input was wrong, nothing was written."""
    click.echo(f"Error: {message}", err=True)
    sys.exit(2)


class LazyGroup(click.Group):
    """A group that imports the commands of ``LAZY_COMMANDS`` only when one is used."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *LAZY_COMMANDS})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in LAZY_COMMANDS and name not in self.commands:
            target, line = LAZY_COMMANDS[name]
            module, _, attribute = target.partition(":")
            command = getattr(importlib.import_module(module), attribute)
            command.short_help = line
            self.add_command(command, name)
        return super().get_command(ctx, name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The command list, with stand-ins for the commands not imported yet."""
        stand_ins = {n: click.Command(n, short_help=line) for n, (_, line) in LAZY_COMMANDS.items()}
        listing = click.Group(self.name, commands={**stand_ins, **self.commands})
        click.Group.format_commands(listing, ctx, formatter)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="dynalign")
def cli() -> None:
    """Record and analyse the learning dynamics of backprop and feedback alignment."""


class BadValue(click.ClickException):
    """A flag's value the config refuses: one ``Error: ...`` line, exit code 2."""

    exit_code = 2


class ConfigValue(click.ParamType):
    """The value of a flag that sets one config key, read and checked as the config does, so
    that the flag and ``--set`` give one message for one mistake."""

    def __init__(self, key: str):
        self.key = key

    def convert(self, value, param, ctx):
        try:
            return check_value(self.key, value)
        except ConfigError as err:
            raise BadValue(str(err)) from None


class ConfigText(ConfigValue, click.types.StringParamType):
    pass


class ConfigInt(ConfigValue, click.IntRange):
    def __init__(self, key: str):
        low, high, low_open = value_range(key)
        if low_open:  # "x>=1" reads better than "x>0" for a count
            low, low_open = low + 1, False
        click.IntRange.__init__(self, low, high)
        ConfigValue.__init__(self, key)


class ConfigFloat(ConfigValue, click.FloatRange):
    def __init__(self, key: str):
        low, high, low_open = value_range(key)
        click.FloatRange.__init__(self, low, high, min_open=low_open)
        ConfigValue.__init__(self, key)


CONFIG_TYPES = {"int": ConfigInt, "float": ConfigFloat, "str": ConfigText}

#: `record`'s flags that set one config key each: (key, help); type, range and default shown
#: come from the config
FLAGS = {
    "rule": ("rule.name", f"learning rule: {', '.join(RULES.names())}"),
    "model": ("model.kind", f"model kind: {', '.join(MODELS.names())}"),
    "depth": ("model.depth", "hidden layers (mlp)"),
    "width": ("model.width", "hidden units per layer (mlp, rnn, autoencoder)"),
    "dataset": ("data.name", f"data set: {', '.join(DATASETS.names())}"),
    "data_dir": ("data.data_dir", "folder holding the data set's files (mnist, cifar10, ...)"),
    "epochs": ("train.epochs", "passes over the training set"),
    "lr": ("train.lr", "learning rate"),
    "batch_size": ("train.batch_size", "samples per minibatch (one optimiser step each)"),
    "seed": ("train.seed", "seed of the data split, initial weights, B and minibatch order"),
    "device": ("train.device", "cpu, cuda or cuda:N"),
    "threads": (
        "train.threads",
        "CPU threads for torch (1: fastest on a shared machine; raise it on a dedicated one)",
    ),
}


def config_flags(command):
    """Add the ``FLAGS`` options to ``command``, in the table's order."""
    for name, (key, help) in reversed(FLAGS.items()):
        flag = "--" + name.replace("_", "-")
        kind = CONFIG_TYPES[key_type(key)](key)
        option = click.option(
            flag, name, type=kind, default=default_value(key), show_default=True, help=help
        )
        command = option(command)
    return command


@cli.command(short_help="Train a network and record its learning dynamics into a store.")
@click.option("--preset", help="start from a named preset (see `dynalign presets`)")
@click.option(
    "--config",
    "config_file",
    type=str,
    help="TOML file with [model], [rule], [data], [train], [probes] sections",
)
@click.option(
    "--set",
    "assignments",
    multiple=True,
    metavar="KEY=VALUE",
    help="override one config key, e.g. --set train.momentum=0.5 (repeatable)",
)
@config_flags
@click.option(
    "--out",
    type=click.Path(),
    help="store to write (default: runs/<preset>.zarr, else runs/<rule>-<dataset>.zarr)",
)
@click.option("--overwrite", is_flag=True, help="replace an existing run store at --out")
@click.option(
    "--resume",
    "resume_store",
    type=click.Path(),
    metavar="STORE",
    help="continue the stopped, failed or killed run in STORE from its last checkpoint",
)
@click.option(
    "--quiet", is_flag=True, help="no start line or progress (errors and the summary still show)"
)
def record(preset, config_file, assignments, out, overwrite, resume_store, quiet, **flags) -> None:
    """Train a network and record its learning dynamics into a zarr store.

    The config starts from the defaults shown below; a --preset, then a --config file, then
    --set and the flags override them, later ones winning. Progress goes to stderr: a bar on a
    terminal, else one line per epoch.
    """
    from pathlib import Path

    from dynalign.data import DataError
    from dynalign.record import record as run_record
    from dynalign.record import resume
    from dynalign.store import StoreError

    ctx = click.get_current_context()
    flags = {
        k: v for k, v in flags.items() if ctx.get_parameter_source(k) != ParameterSource.DEFAULT
    }
    if resume_store is not None:
        given = [f"--{k.replace('_', '-')}" for k in flags]
        given += [
            name
            for name, v in (
                ("--preset", preset),
                ("--config", config_file),
                ("--set", assignments),
                ("--out", out),
                ("--overwrite", overwrite),
            )
            if v
        ]
        if given:
            fail(f"--resume takes the run's configuration from its store; drop {', '.join(given)}")
        run = lambda: resume(resume_store, progress=not quiet)  # noqa: E731
        out = Path(resume_store)
    else:
        try:
            overrides = parse_assignments(assignments)
            overrides.update({FLAGS[k][0]: v for k, v in flags.items()})
            config = build_config(preset, config_file, overrides)
        except ConfigError as err:
            fail(str(err))
        if out is None:
            out = f"runs/{preset or config.rule.name + '-' + config.data.name}.zarr"
        out = Path(out)
        run = lambda: run_record(config, out, overwrite=overwrite, progress=not quiet)  # noqa: E731
    started = time.monotonic()
    try:
        result = run()
    except (ConfigError, DataError, StoreError) as err:
        fail(str(err))
    except KeyboardInterrupt:
        fail(f"interrupted before the run began; {out} was not written")
    click.echo(f"store: {out}")
    click.echo(_summary_line(result, time.monotonic() - started))
    if result.status == "interrupted":
        click.echo(f"continue it with: dynalign record --resume {out}")
    if result.status not in ("completed",):
        sys.exit(1)


def _summary_line(result, seconds: float) -> str:
    """``status: completed  steps: 390  epochs: 30  time: 12.3 s  train_loss: ...``."""
    parts = [f"status: {result.status}", f"steps: {result.steps}", f"epochs: {result.epochs}"]
    parts.append(f"time: {seconds:.1f} s")
    for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy"):
        value = result.final.get(key)
        if value is not None and not (isinstance(value, float) and math.isnan(value)):
            parts.append(f"{key}: {value:.4f}")
    line = "  ".join(parts)
    return f"{line}\n{result.message}" if result.message else line


@cli.command(short_help="Print a run's (or a study's) status, config, steps and metrics.")
@click.argument("store", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@click.option("--check", is_flag=True, help="read every chunk and list what is missing or damaged")
def inspect(store, as_json, check) -> None:
    """Print a store's status, config (the keys its run reads; --json: all), steps, layers and
    final metrics (for a study directory: every arm's runs and the per-arm mean [CI] table)."""
    from dynalign.reader import check_store, open_run, writer_note
    from dynalign.store import StoreError

    from .analyze import inspect_study, study_target

    if study_target((store,)) is not None:
        sys.exit(inspect_study(store, as_json, check))

    try:
        tree = open_run(store)
        problems = check_store(store, decode=check)
    except StoreError as err:
        fail(str(err))
    info = _store_info(store, tree)
    info["note"] = writer_note(store, dict(tree.attrs))
    info["problems"], info["decoded"] = problems, check
    if as_json:
        click.echo(json.dumps(_json_safe(info), indent=2, default=str, allow_nan=False))
    else:
        _print_info(store, info)
    if check and problems:
        sys.exit(1)


def _store_info(store: str, tree) -> dict:
    """What `inspect` shows, from attributes that may be damaged (each read defensively)."""
    attrs = dict(tree.attrs)
    try:
        config = json.loads(attrs.get("config", "{}"))
    except (TypeError, ValueError):
        config = None
    if not isinstance(config, dict) or not all(isinstance(v, dict) for v in config.values()):
        config = {"(damaged)": {"config": str(attrs.get("config"))[:80]}}
    layers = attrs.get("layers", [])
    layers = [str(x) for x in layers] if isinstance(layers, list) else [f"(damaged: {layers!r})"]
    steps = tree["steps"].sizes.get("step", 0) if "steps" in tree else 0
    epochs = tree["epochs"].ds if "epochs" in tree else None
    n_epochs = epochs.sizes.get("epoch", 0) if epochs is not None else 0
    final = {
        k: float(epochs[k][-1])
        for k in ("train_loss", "train_accuracy", "val_loss", "val_accuracy")
        if n_epochs and k in epochs
    }
    dataset = attrs.get("dataset")
    return {
        "path": str(store),
        "status": attrs.get("status"),
        "message": attrs.get("message", ""),
        "created": attrs.get("created"),
        "dynalign_version": attrs.get("dynalign_version"),
        "steps": int(steps),
        "epochs": int(n_epochs),
        "layers": layers,
        "dataset": dataset if isinstance(dataset, dict) else {},
        "final": final,
        "config": config,
        "missing_groups": [g for g in ("steps", "epochs") if g not in tree],
    }


def _json_safe(value):
    """NaN and infinities as null: JSON has no words for them."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def _print_info(store: str, info: dict) -> None:
    click.echo(
        f"{store}\n  status:   {info['status']}"
        + (f" ({info['message']})" if info["message"] else "")
    )
    if info["note"]:
        click.echo(f"  note:     {info['note']}")
    click.echo(f"  created:  {info['created']}  (dynalign {info['dynalign_version']})")
    ds = info["dataset"]
    click.echo(
        f"  data:     {ds.get('name')}  train {ds.get('n_train')}  val {ds.get('n_val')}"
        f"  sha256 {str(ds.get('sha256', ''))[:12]}"
    )
    click.echo(f"  steps:    {info['steps']}   epochs: {info['epochs']}")
    click.echo(f"  layers:   {', '.join(info['layers'])}")
    for section, values in keys_read(info["config"]).items():
        click.echo(f"  [{section}] " + "  ".join(f"{k}={v}" for k, v in values.items()))
    click.echo(f"  (config keys this run reads; all of them: dynalign inspect {store} --json)")
    if info["final"]:
        click.echo("  final:    " + "  ".join(f"{k} {v:.4f}" for k, v in info["final"].items()))
    for group in info["missing_groups"]:
        click.echo(f"  warning:  the store has no {group} group (damaged)")
    for problem in info["problems"]:
        click.echo(f"  damaged:  {problem}")
    if not info["problems"]:
        done = "present and decoded" if info["decoded"] else "present"
        click.echo(f"  check:    every array and chunk {done}")


@cli.command()
def presets() -> None:
    """List the shipped presets, one line each."""
    names = preset_names()
    width = max(map(len, names), default=0)
    for name in names:
        click.echo(f"{name:<{width}}  {preset_description(name)}")


def main() -> None:
    try:
        cli(prog_name="dynalign")
    finally:
        # The command has closed its stores and released its locks. Freezing what is alive
        # keeps the interpreter's shutdown collections from walking every object torch, numba
        # and zarr created, which took 0.7 s at the end of a `record`; the memory goes back
        # to the system at exit all the same.
        gc.freeze()
