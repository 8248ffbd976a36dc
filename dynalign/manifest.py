"""A study's manifest, ``DIR/study.json``: the spec, the arms and every run's state, in one file.

Only the sweep's driver writes it, always whole, to a temporary file that is flushed to the disk
and renamed over the old one: a reader, or the next sweep after a crash, sees the last complete
version. The run stores stay the truth about each run; the manifest is their index.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from . import __version__, study_reader
from .spec import SpecError, StudySpec
from .store import FINISHED
from .study_reader import FORMAT, KIND, MANIFEST

__all__ = ["FINISHED", "merge", "new_manifest", "now", "read_manifest", "write_manifest"]


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def read_manifest(directory: str | Path) -> dict[str, Any] | None:
    """The checked manifest of the study in ``directory``; None when there is none yet."""
    if not (Path(directory) / MANIFEST).exists():
        return None
    return study_reader.read_manifest(directory)


def write_manifest(directory: str | Path, manifest: dict[str, Any]) -> None:
    """Replace the manifest atomically (temporary file, fsync, rename, fsync of the folder)."""
    directory = Path(directory)
    manifest["updated"] = now()
    target = directory / MANIFEST
    temporary = directory / f".{MANIFEST}.tmp"
    with open(temporary, "w", encoding="utf-8") as fh:
        json.dump(manifest, fh, indent=1, allow_nan=False)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(temporary, target)
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def new_manifest(spec: StudySpec) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "kind": KIND,
        "spec_text": spec.text,
        "spec_path": spec.path,
        "name": spec.name,
        "description": spec.description,
        "finding": spec.finding,
        "scale": spec.scale,
        "grid": spec.grid,
        "dims": spec.dims,
        "seeds": spec.seeds,
        "arms": [{"name": a.name, "overrides": a.overrides, "labels": a.labels} for a in spec.arms],
        "runs": [],
        "dynalign_version": __version__,
        "torch_version": torch.__version__,
        "created": now(),
        "updated": now(),
    }


def merge(directory: Path, existing: dict[str, Any] | None, spec: StudySpec) -> dict[str, Any]:
    """The manifest for running ``spec`` in ``directory``: the existing one continued.

    A run already listed must have the same config as the spec now gives it (a changed spec
    would mix two experiments under one name); runs the spec adds (more seeds, more arms) are
    appended as pending.
    """
    manifest = new_manifest(spec)
    if existing is not None:
        manifest["created"] = existing.get("created", manifest["created"])
        old = {(r["arm"], r["seed"]): r for r in existing.get("runs", [])}
        old_arms = {a["name"] for a in existing.get("arms", [])}
        arms = list(existing.get("arms", []))
        arms += [a for a in manifest["arms"] if a["name"] not in old_arms]
        manifest["arms"] = arms
        manifest["seeds"] = sorted({*existing.get("seeds", []), *spec.seeds})
    else:
        old = {}
    runs = []
    for point in spec.points:
        run = old.pop((point.arm, point.seed), None)
        if run is not None and run.get("config_hash") != point.config_hash:
            raise SpecError(
                f"{directory} holds a different study: its run {point.arm} seed {point.seed} was "
                "recorded with another config than the spec now gives; run the changed spec "
                "into another --out"
            )
        runs.append(
            run
            or {
                "arm": point.arm,
                "seed": point.seed,
                "store": point.store,
                "config": point.config_json,
                "config_hash": point.config_hash,
                "status": "pending",
                "message": "",
                "started": None,
                "finished": None,
                "seconds": None,
                "attempts": 0,
                "steps": 0,
            }
        )
    runs.extend(old.values())  # runs of an earlier, larger spec stay listed
    manifest["runs"] = runs
    return manifest
