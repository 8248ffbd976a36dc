"""The ``dynalign`` command: record runs, inspect stores, list presets, analyse and report."""

from __future__ import annotations

import json
import math
import sys

import click

from dynalign.config import (
    ConfigError,
    build_config,
    parse_assignments,
    preset_description,
    preset_names,
)
from dynalign.registry import DATASETS, MODELS, RULES
from dynalign.store import StoreError


def fail(message: str) -> None:
    """One line on stderr and exit code 2: the user's input was wrong, nothing was written."""
    click.echo(f"Error: {message}", err=True)
    sys.exit(2)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="dynalign")
def cli() -> None:
    """Record and analyse the learning dynamics of backprop and feedback alignment."""


@cli.command()
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
@click.option("--rule", type=str, help=f"learning rule: {', '.join(RULES.names())}")
@click.option("--model", type=str, help=f"model kind: {', '.join(MODELS.names())}")
@click.option("--depth", type=str, help="hidden layers of the MLP")
@click.option("--width", type=str, help="hidden units per layer")
@click.option("--dataset", type=str, help=", ".join(DATASETS.names()))
@click.option("--data-dir", type=str, help="directory holding the dataset's files")
@click.option("--epochs", type=str)
@click.option("--lr", type=str, help="learning rate")
@click.option("--batch-size", type=str)
@click.option("--seed", type=str)
@click.option("--device", type=str, help="cpu (default) or cuda")
@click.option("--threads", type=str, help="CPU threads for torch (default: all cores)")
@click.option(
    "--out", type=click.Path(), help="store to write (default runs/<preset or rule>.zarr)"
)
@click.option("--overwrite", is_flag=True, help="replace an existing run store at --out")
@click.option(
    "--resume",
    "resume_store",
    type=click.Path(),
    metavar="STORE",
    help="continue the stopped, failed or killed run in STORE from its last checkpoint",
)
@click.option("--quiet", is_flag=True, help="no progress bar")
def record(preset, config_file, assignments, out, overwrite, resume_store, quiet, **flags) -> None:
    """Train a network and record its learning dynamics into a zarr store."""
    from pathlib import Path

    from dynalign.data import DataError
    from dynalign.record import record as run_record
    from dynalign.record import resume

    if resume_store is not None:
        given = [f"--{k.replace('_', '-')}" for k, v in flags.items() if v is not None]
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
            overrides.update({k: v for k, v in flags.items() if v is not None})
            config = build_config(preset, config_file, overrides)
        except ConfigError as err:
            fail(str(err))
        if out is None:
            out = f"runs/{preset or config.rule.name + '-' + config.data.name}.zarr"
        out = Path(out)
        run = lambda: run_record(config, out, overwrite=overwrite, progress=not quiet)  # noqa: E731
    try:
        result = run()
    except (ConfigError, DataError, StoreError) as err:
        fail(str(err))
    except KeyboardInterrupt:
        fail(f"interrupted before the run began; {out} was not written")
    click.echo(f"store: {out}")
    click.echo(_summary_line(result.status, result.steps, result.final, result.message))
    if result.status == "interrupted":
        click.echo(f"continue it with: dynalign record --resume {out}")
    if result.status not in ("completed",):
        sys.exit(1)


def _summary_line(status: str, steps: int, final: dict, message: str = "") -> str:
    parts = [f"status: {status}", f"steps: {steps}"]
    for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy"):
        value = final.get(key)
        if value is not None and not (isinstance(value, float) and math.isnan(value)):
            parts.append(f"{key}: {value:.4f}")
    line = "  ".join(parts)
    return f"{line}\n{message}" if message else line


@cli.command()
@click.argument("store", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@click.option("--check", is_flag=True, help="read every chunk and list what is missing or damaged")
def inspect(store, as_json, check) -> None:
    """Print a store's status, config, steps, layers and final metrics (for a study directory:
    every arm's runs and the per-arm mean [CI] table)."""
    from dynalign.reader import check_store, open_run, writer_note

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
    for section, values in info["config"].items():
        click.echo(f"  [{section}] " + "  ".join(f"{k}={v}" for k, v in values.items()))
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


def _register_analysis_commands() -> None:
    from .analyze import analyze, report
    from .study import reproduce, sweep

    cli.add_command(analyze)
    cli.add_command(report)
    cli.add_command(sweep)
    cli.add_command(reproduce)


_register_analysis_commands()


def main() -> None:
    cli(prog_name="dynalign")
