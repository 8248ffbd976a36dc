"""Study specs: a base preset, config sections, a ``[grid]`` or ``[[arms]]``, and the seeds.

A spec expands into points (arm, seed), each a validated :class:`~dynalign.config.Config`. Every
point is built here, before any run starts, so a bad key, an empty grid, a value the config
rejects, duplicate arm names or missing seeds end with one line naming the file and the fix.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib

from .config import (
    IMAGE_DATA,
    MAX_CONFIG_BYTES,
    SEED_MAX,
    Config,
    ConfigError,
    _sections,
    _suggest,
    apply,
    build_config,
    describe_path,
    flatten,
)


class SpecError(ConfigError):
    """A study spec that cannot be run; the message names the file, the entry and the fix."""


SCALES = ("quick", "full")
#: top-level entries of a spec besides the config sections
SPEC_KEYS = ("description", "base", "seeds", "n_seeds", "grid", "arms", "finding", "scale")
#: arm names become directory names: keep them to characters every file system takes
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._=,+-]*")
#: short names of grid keys whose last part says little on its own
SHORT_NAMES = {"rule.name": "rule", "data.name": "data", "model.kind": "model"}
MAX_SEEDS = 1000


@dataclass(frozen=True)
class Arm:
    """One configuration of a study: its name, its dotted overrides and, for a grid, its values."""

    name: str
    overrides: dict[str, Any]
    labels: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Point:
    """One run: an arm at one seed, its config and its store's path inside the study."""

    arm: str
    seed: int
    config: Config

    @property
    def store(self) -> str:
        return f"runs/{self.arm}/seed-{self.seed}.zarr"

    @property
    def config_json(self) -> str:
        return self.config.to_json()

    @property
    def config_hash(self) -> str:
        return hashlib.sha256(self.config_json.encode()).hexdigest()


@dataclass
class StudySpec:
    """A parsed, validated spec: what :func:`dynalign.sweep.run_study` runs."""

    name: str
    path: str
    text: str
    description: str
    base: str | None
    arms: list[Arm]
    seeds: list[int]
    points: list[Point]
    grid: dict[str, list[Any]] | None = None
    dims: dict[str, str] = field(default_factory=dict)
    finding: dict[str, Any] | None = None
    scale: str | None = None

    def arm_configs(self) -> dict[str, dict[str, Any]]:
        """Arm name -> its flat config (dotted keys) at the first seed: what criteria select on."""
        first = {}
        for point in self.points:
            first.setdefault(point.arm, flatten(point.config.to_dict()))
        return first


def load_spec(
    path: str | Path,
    scale: str | None = None,
    seeds: list[int] | None = None,
    data: str | None = None,
) -> StudySpec:
    """Read and validate the spec at ``path``.

    scale: apply the spec's ``[scale.<name>]`` overrides (quick or full). seeds: replace the
    spec's seeds. data: run the arms that train on image data on this data set instead.
    """
    path = Path(path).expanduser()
    what = f"study spec {str(path)!r}"
    if not path.is_file():
        raise SpecError(f"{what} {describe_path(path)}; give a .toml study spec")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise SpecError(f"{what} is too large for a spec; give a .toml study spec")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise SpecError(f"cannot read {what}: {err}; give a UTF-8 TOML file") from None
    return parse_spec(
        text, name=path.stem, where=path.name, path=str(path), scale=scale, seeds=seeds, data=data
    )


def parse_spec(
    text: str,
    name: str = "study",
    where: str = "spec",
    path: str = "",
    scale: str | None = None,
    seeds: list[int] | None = None,
    data: str | None = None,
) -> StudySpec:
    """:func:`load_spec` on the spec's text (``where`` names it in messages)."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise SpecError(f"{where} is not valid TOML: {err}; fix that line") from None
    sections = _sections()
    for key, value in raw.items():
        if key in sections:
            if not isinstance(value, dict):
                raise SpecError(f"{where}: {key} = {value!r} is not a section; write [{key}]")
        elif key not in SPEC_KEYS:
            known = [*SPEC_KEYS, *sections]
            raise SpecError(
                f"{where}: unknown entry {key!r}{_suggest(key, known)}; a spec has "
                f"{', '.join(SPEC_KEYS)} and the config sections {', '.join(sections)}"
            )
    if scale is not None and scale not in SCALES:
        raise SpecError(f"scale {scale!r} is not one of {', '.join(SCALES)}")
    base = raw.get("base")
    if base is not None and not isinstance(base, str):
        raise SpecError(f'{where}: base = {base!r} must be a preset name, e.g. base = "fc3-fa"')
    common = flatten({k: v for k, v in raw.items() if k in sections})
    _no_seed_key(common, where, "its sections")
    scales = _scale_tables(raw.get("scale"), where, "[scale]")
    arms, grid, dims = _arms(raw, where)
    seed_list = _seeds(raw, where) if seeds is None else _check_seeds(seeds, where, "--seeds")
    description = raw.get("description", "")
    if not isinstance(description, str):
        raise SpecError(f"{where}: description must be text")
    finding = raw.get("finding")
    if finding is not None and not isinstance(finding, dict):
        raise SpecError(f"{where}: finding must be a table: [finding]")

    points = []
    for arm in arms:
        overrides = {**common, **scales.get(scale, {})} if scale else dict(common)
        overrides.update(arm.overrides)
        if scale:
            overrides.update(_arm_scale(arm, raw, where).get(scale, {}))
        for seed in seed_list:
            config = _point_config(base, overrides, seed, data, where, arm.name)
            points.append(Point(arm.name, seed, config))
    return StudySpec(
        name=name,
        path=path,
        text=text,
        description=description,
        base=base,
        arms=arms,
        seeds=seed_list,
        points=points,
        grid=grid,
        dims=dims,
        finding=finding,
        scale=scale,
    )


def _point_config(
    base: str | None, overrides: dict[str, Any], seed: int, data: str | None, where: str, arm: str
) -> Config:
    # the sweep sets each worker's threads; leaving them unset keeps a point's config (and so
    # its hash in a study directory) independent of the record command's default
    fixed = {"train.threads": None, **overrides, "train.seed": seed}
    try:
        config = build_config(base, None, fixed)
        if data is not None and config.data.name in IMAGE_DATA:
            config = build_config(base, None, {**fixed, "data.name": data})
    except ConfigError as err:
        label = f"base preset {base!r}" if "preset" in str(err) else f"arm {arm!r}"
        raise SpecError(f"{where}: {label}: {err}") from None
    return config


def _no_seed_key(overrides: dict[str, Any], where: str, place: str) -> None:
    if "train.seed" in overrides or "seed" in overrides:
        raise SpecError(
            f"{where}: train.seed is set in {place}; a study's seeds come from `seeds = [...]` "
            "or `n_seeds = N`: remove train.seed"
        )


def _scale_tables(value: Any, where: str, place: str) -> dict[str, dict[str, Any]]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise SpecError(f"{where}: {place} must be tables [scale.quick] / [scale.full]")
    out = {}
    for name, table in value.items():
        if name not in SCALES:
            raise SpecError(
                f"{where}: {place}: unknown scale {name!r}{_suggest(name, list(SCALES))}; "
                f"use {', '.join(SCALES)}"
            )
        if not isinstance(table, dict):
            raise SpecError(f"{where}: {place}.{name} must be a table of dotted keys")
        out[name] = _checked_keys(flatten(table), where, f"{place}.{name}")
    return out


def _arm_scale(arm: Arm, raw: dict[str, Any], where: str) -> dict[str, dict[str, Any]]:
    for table in raw.get("arms") or []:
        if isinstance(table, dict) and table.get("name") == arm.name:
            return _scale_tables(table.get("scale"), where, f"arm {arm.name!r} scale")
    return {}


def _checked_keys(overrides: dict[str, Any], where: str, place: str) -> dict[str, Any]:
    """Each key a config key (values are checked when the points are built)."""
    try:
        apply(Config(), {k: v for k, v in overrides.items() if k != "train.seed"})
    except ConfigError as err:
        raise SpecError(f"{where}: {place}: {err}") from None
    _no_seed_key(overrides, where, place)
    return overrides


def _arms(raw: dict[str, Any], where: str) -> tuple[list[Arm], dict | None, dict[str, str]]:
    grid, arms = raw.get("grid"), raw.get("arms")
    if grid is not None and arms is not None:
        raise SpecError(f"{where}: has both [grid] and [[arms]]; keep one of them")
    if grid is None and arms is None:
        return [Arm("base", {})], None, {}
    if grid is not None:
        return _grid_arms(grid, where)
    if not isinstance(arms, list) or not arms:
        raise SpecError(f"{where}: arms must be one or more [[arms]] tables, each with a name")
    out, seen = [], set()
    for i, table in enumerate(arms):
        if not isinstance(table, dict):
            raise SpecError(f"{where}: arms[{i}] is not a table; write [[arms]] and name = ...")
        name = table.get("name")
        if not isinstance(name, str) or not name:
            raise SpecError(f'{where}: arms[{i}] has no name; add name = "..."')
        if not SAFE_NAME.fullmatch(name):
            raise SpecError(
                f"{where}: arm name {name!r} would be a directory name; use letters, digits "
                "and . _ = , + - only"
            )
        if name in seen:
            raise SpecError(f"{where}: two arms are named {name!r}; give each arm its own name")
        seen.add(name)
        rest = {k: v for k, v in table.items() if k not in ("name", "scale")}
        overrides = _checked_keys(flatten(rest), where, f"arm {name!r}")
        out.append(Arm(name, overrides))
    return out, None, {}


def _grid_arms(grid: Any, where: str) -> tuple[list[Arm], dict, dict[str, str]]:
    if not isinstance(grid, dict):
        raise SpecError(f'{where}: grid must be a table: [grid] with "section.key" = [values]')
    grid = flatten(grid)
    if not grid:
        raise SpecError(f'{where}: [grid] is empty; give it "section.key" = [values, ...]')
    for key, values in grid.items():
        if not isinstance(values, list):
            raise SpecError(
                f"{where}: grid {key} = {values!r} is not a list; write {key} = [{values!r}]"
            )
        if not values:
            raise SpecError(f"{where}: grid {key} is an empty list; give it one or more values")
        labels = [_value_label(v) for v in values]
        if len(set(labels)) < len(labels):
            raise SpecError(f"{where}: grid {key} repeats a value; list each value once")
    _checked_keys({k: v[0] for k, v in grid.items()}, where, "[grid]")
    canonical = {k: _canonical_key(k) for k in grid}
    grid = {canonical[k]: v for k, v in grid.items()}
    dims = _short_names(list(grid))
    varying = [k for k, v in grid.items() if len(v) > 1] or list(grid)[:1]
    combos: list[dict[str, Any]] = [{}]
    for key, values in grid.items():
        combos = [{**c, key: v} for c in combos for v in values]
    arms = []
    for combo in combos:
        name = ",".join(f"{dims[k]}={_value_label(combo[k])}" for k in varying)
        arms.append(Arm(name, dict(combo), dict(combo)))
    return arms, grid, dims


def _canonical_key(key: str) -> str:
    """``lr`` -> ``train.lr``: a grid key as the config names it (labels and dims use it)."""
    from .config import ALIASES, keys

    key = ALIASES.get(key, key)
    if "." not in key:
        matches = [k for k in keys() if k.endswith("." + key)]
        if len(matches) == 1:
            return matches[0]
    return key


def _short_names(grid_keys: list[str]) -> dict[str, str]:
    short = {k: SHORT_NAMES.get(k, k.rsplit(".", 1)[-1]) for k in grid_keys}
    clashes = {s for s in short.values() if list(short.values()).count(s) > 1}
    return {k: (k if s in clashes else s) for k, s in short.items()}


def _value_label(value: Any) -> str:
    """A value as it reads in an arm name: 0.1, fa, true, 16-32 (unsafe characters as _)."""
    if isinstance(value, bool):
        text = str(value).lower()
    elif isinstance(value, list):
        text = "-".join(_value_label(v) for v in value)
    else:
        text = str(value)
    return re.sub(r"[^A-Za-z0-9._+-]", "_", text)


def _seeds(raw: dict[str, Any], where: str) -> list[int]:
    if "seeds" in raw and "n_seeds" in raw:
        raise SpecError(f"{where}: has both seeds and n_seeds; keep one of them")
    if "seeds" in raw:
        seeds = raw["seeds"]
        if not isinstance(seeds, list):
            raise SpecError(f"{where}: seeds = {seeds!r} must be a list, e.g. seeds = [0, 1, 2]")
        return _check_seeds(seeds, where, "seeds")
    if "n_seeds" in raw:
        n = raw["n_seeds"]
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_SEEDS:
            raise SpecError(
                f"{where}: n_seeds = {n!r} must be a whole number from 1 to {MAX_SEEDS}"
            )
        return list(range(n))
    for section, table in raw.items():
        if isinstance(table, dict) and ("seeds" in table or "n_seeds" in table):
            raise SpecError(
                f"{where}: seeds are inside [{section}]; TOML puts every key after a [section] "
                "line into it: move seeds (or n_seeds) before the first [section]"
            )
    raise SpecError(f"{where}: no seeds; add seeds = [0, 1, 2] or n_seeds = 3")


def _check_seeds(seeds: list[Any], where: str, place: str) -> list[int]:
    if not seeds:
        raise SpecError(f"{where}: {place} is empty; give one or more seeds, e.g. [0, 1, 2]")
    for seed in seeds:
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= SEED_MAX:
            raise SpecError(
                f"{where}: {place}: {seed!r} is not a seed; give whole numbers from 0 to {SEED_MAX}"
            )
    if len(set(seeds)) < len(seeds):
        raise SpecError(f"{where}: {place} repeats a seed; list each seed once")
    if len(seeds) > MAX_SEEDS:
        raise SpecError(f"{where}: {place} has {len(seeds)} seeds; give at most {MAX_SEEDS}")
    return [int(s) for s in seeds]
