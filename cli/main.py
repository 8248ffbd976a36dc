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
    type=click.Path(dir_okay=False),
    help="TOML file with [model], [rule], [data], [train], [probes] sections",
)
@click.option(
    "--set",
    "assignments",
    multiple=True,
    metavar="KEY=VALUE",
    help="override one config key, e.g. --set train.momentum=0.5 (repeatable)",
)
@click.option("--rule", type=str, help="learning rule: bp or fa")
@click.option("--model", type=str, help="model kind: mlp, convnet, rnn, autoencoder")
@click.option("--depth", type=str, help="hidden layers of the MLP")
@click.option("--width", type=str, help="hidden units per layer")
@click.option(
    "--dataset", type=str, help="digits, mnist, fashion-mnist, cifar10, synthetic, patches, text"
)
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
@click.option("--overwrite", is_flag=True, help="replace an existing store at --out")
@click.option("--quiet", is_flag=True, help="no progress bar")
def record(preset, config_file, assignments, out, overwrite, quiet, **flags) -> None:
    """Train a network and record its learning dynamics into a zarr store."""
    from pathlib import Path

    from dynalign.data import DataError
    from dynalign.record import record as run_record

    try:
        overrides = parse_assignments(assignments)
        overrides.update({k: v for k, v in flags.items() if v is not None})
        config = build_config(preset, config_file, overrides)
    except ConfigError as err:
        fail(str(err))
    if out is None:
        out = f"runs/{preset or config.rule.name + '-' + config.data.name}.zarr"
    out = Path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        fail(f"cannot create the directory for {out}: {err.strerror}")
    try:
        result = run_record(config, out, overwrite=overwrite, progress=not quiet)
    except (ConfigError, DataError, StoreError) as err:
        fail(str(err))
    except KeyboardInterrupt:
        fail(f"interrupted; {out} keeps status 'interrupted'")
    click.echo(f"store: {out}")
    click.echo(_summary_line(result.status, result.steps, result.final, result.message))
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
def inspect(store, as_json) -> None:
    """Print a store's status, config, steps, layers and final metrics."""
    from dynalign.store import open_run

    try:
        tree = open_run(store)
    except StoreError as err:
        fail(str(err))
    attrs = dict(tree.attrs)
    config = json.loads(attrs.get("config", "{}"))
    steps = tree["steps"].sizes.get("step", 0)
    epochs = tree["epochs"].ds
    final = {
        k: float(epochs[k][-1])
        for k in ("train_loss", "train_accuracy", "val_loss", "val_accuracy")
        if epochs.sizes.get("epoch", 0)
    }
    info = {
        "path": str(store),
        "status": attrs.get("status"),
        "message": attrs.get("message", ""),
        "created": attrs.get("created"),
        "dynalign_version": attrs.get("dynalign_version"),
        "steps": int(steps),
        "epochs": int(epochs.sizes.get("epoch", 0)),
        "layers": list(attrs.get("layers", [])),
        "dataset": attrs.get("dataset"),
        "final": final,
        "config": config,
    }
    if as_json:
        click.echo(json.dumps(info, indent=2, default=str))
        return
    click.echo(
        f"{store}\n  status:   {info['status']}"
        + (f" ({info['message']})" if info["message"] else "")
    )
    click.echo(f"  created:  {info['created']}  (dynalign {info['dynalign_version']})")
    ds = info["dataset"] or {}
    click.echo(
        f"  data:     {ds.get('name')}  train {ds.get('n_train')}  val {ds.get('n_val')}"
        f"  sha256 {str(ds.get('sha256', ''))[:12]}"
    )
    click.echo(f"  steps:    {info['steps']}   epochs: {info['epochs']}")
    click.echo(f"  layers:   {', '.join(info['layers'])}")
    for section, values in config.items():
        click.echo(f"  [{section}] " + "  ".join(f"{k}={v}" for k, v in values.items()))
    if final:
        click.echo("  final:    " + "  ".join(f"{k} {v:.4f}" for k, v in final.items()))


@cli.command()
def presets() -> None:
    """List the shipped presets, one line each."""
    names = preset_names()
    width = max(map(len, names), default=0)
    for name in names:
        click.echo(f"{name:<{width}}  {preset_description(name)}")


def _register_analysis_commands() -> None:
    from .analyze import analyze, report

    cli.add_command(analyze)
    cli.add_command(report)


_register_analysis_commands()


def main() -> None:
    cli(prog_name="dynalign")
