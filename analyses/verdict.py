"""Pre-declared criteria for a finding, checked before the runs and judged after them.

A finding states its criteria before any run (``[[finding.criteria]]`` in its study spec), so a
verdict cannot be tuned to the data. :func:`validate_criteria` rejects everything that can be
wrong before a run starts (unknown tests, metrics, arms, keys; wrong types), one line per
mistake, so a typo costs seconds instead of a sweep. :func:`evaluate` turns a study summary
(dims arm x seed) into a per-criterion verdict with the effect, its bootstrap CI and a
sentence; :func:`combine` gives the finding's verdict. Few seeds or a CI that straddles the
bound is *inconclusive*, never silently "reproduced".
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import xarray as xr

from dynalign.analyses.smoothing import bootstrap_ci

REPRODUCED = "reproduced"
NOT_REPRODUCED = "not reproduced"
INCONCLUSIVE = "inconclusive"

PAIRED = ("within", "less", "greater")  # effect per seed = a - b
SINGLE = ("below", "above")  # effect per seed = a
TESTS = (*PAIRED, *SINGLE, "count")
# Which keys each test takes (beyond name/metric/test, and the optional `largest`).
REQUIRED = {
    "within": ("a", "b", "margin"),
    "less": ("a", "b"),
    "greater": ("a", "b"),
    "below": ("a", "threshold"),
    "above": ("a", "threshold"),
    "count": ("a", "threshold", "at_least"),
}
OPTIONAL = {"count": ("also",)}
KEYS = ("name", "metric", "test", "a", "b", "margin", "threshold", "at_least", "also", "largest")
# `largest` keeps, per seed, the arms whose metric is above this (metric = "stable": 0 or 1).
LARGEST_ABOVE = 0.5
# Only for did-you-mean hints; whether a name is a metric is always is_metric's answer.
METRIC_HINTS = (
    "best_val_accuracy",
    "final_val_accuracy",
    "best_train_accuracy",
    "final_train_accuracy",
    "train_accuracy_epoch_K",
    "val_accuracy_epoch_K",
    "final_val_loss",
    "initial_loss",
    "max_train_loss",
    "diverged",
    "stable",
    "update_angle_plateau",
    "peak_accuracy",
    "unlearning_drop",
    "onset_step",
    "flips_lead",
    "final_fvu",
    "fvu_ratio_mean_image",
    "specificity",
    "epochs_recorded",
)


class CriterionError(ValueError):
    """A malformed criterion; the one-line message says where, what is wrong and the fix."""


# ---------------------------------------------------------------------------- helpers


def _did_you_mean(word: str, choices: list[str] | tuple[str, ...]) -> str:
    choices = [str(c) for c in choices]
    close = [c for c in choices if c.lower() == str(word).lower()]  # "FA" for "fa"
    close = close or difflib.get_close_matches(str(word), choices, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(
        value, (bool, np.bool_)
    )


def _plain(value: Any) -> Any:
    """numpy scalars (and numpy strings) as plain Python values, so == and repr behave."""
    if isinstance(value, np.generic):
        value = value.item()
    return value


def _same(x: Any, y: Any) -> bool:
    """Config equality that keeps True apart from 1 and "3" apart from 3."""
    x, y = _plain(x), _plain(y)
    if isinstance(x, bool) or isinstance(y, bool):
        return isinstance(x, bool) and isinstance(y, bool) and x == y
    if _is_number(x) and _is_number(y):
        return float(x) == float(y)
    return type(x) is type(y) and x == y


def _num(x: float) -> str:
    return "nan" if not math.isfinite(x) else f"{x:.3g}"


def selector_text(selector: Any) -> str:
    """An arm name as is; a selector table as ``key=value,key=value``."""
    if isinstance(selector, Mapping):
        return ",".join(f"{k}={_plain(v)}" for k, v in selector.items())
    return str(selector)


# ---------------------------------------------------------------------------- arms


def select_arms(selector: Any, arms: Mapping[str, Mapping[str, Any]], where: str) -> list[str]:
    """The arm names a selector picks: an arm name, or a table of config key -> value.

    Raises CriterionError when it picks none, saying which name or value was meant.
    """
    names = list(arms)
    if isinstance(selector, str):
        if selector in arms:
            return [selector]
        raise CriterionError(
            f"{where}: no arm is named {selector!r}{_did_you_mean(selector, names)} "
            f"(arms: {', '.join(names)})"
        )
    if not isinstance(selector, Mapping) or not selector:
        raise CriterionError(
            f"{where}: {selector!r} must be an arm name or a table of config values such as "
            '{"rule.name" = "fa"}'
        )
    keys = sorted({k for config in arms.values() for k in config})
    for key, value in selector.items():
        if key not in keys:
            raise CriterionError(
                f"{where}: {key!r} is not a config key of any arm{_did_you_mean(key, keys)}"
            )
        seen = list(dict.fromkeys(_plain(c[key]) for c in arms.values() if key in c))
        if not any(_same(value, v) for v in seen):
            hint = ""
            quoted = [v for v in seen if str(v) == str(value)]
            if quoted:
                hint = f"; did you mean {quoted[0]!r} (a {type(quoted[0]).__name__}, not a string)?"
            elif isinstance(value, str):
                hint = _did_you_mean(value, [v for v in seen if isinstance(v, str)])
            values = ", ".join(repr(v) for v in seen)
            raise CriterionError(f"{where}: no arm has {key} = {value!r} (values: {values}){hint}")
    picked = [
        name
        for name, config in arms.items()
        if all(k in config and _same(v, config[k]) for k, v in selector.items())
    ]
    if not picked:
        raise CriterionError(
            f"{where}: no arm has {selector_text(selector)} together; arms: {', '.join(names)}"
        )
    return picked


def summary_arms(summary: xr.Dataset) -> dict[str, dict[str, Any]]:
    """Arm name -> config values from the summary's coords on ``arm`` (the keys that vary)."""
    keys = [k for k, c in summary.coords.items() if c.dims == ("arm",) and k != "arm"]
    names = [str(a) for a in summary["arm"].values]
    return {
        name: {k: _plain(summary.coords[k].values[i]) for k in keys} for i, name in enumerate(names)
    }


# ---------------------------------------------------------------------------- validation


def validate_criteria(
    criteria: list[dict],
    arms: dict[str, dict[str, Any]],
    is_metric: Callable[[str], bool],
    where: str = "criteria",
) -> None:
    """Check every criterion against the study's arms before any run.

    ``arms`` maps arm name -> flat config (dotted keys); ``where`` prefixes each message, e.g.
    ``"finding-3.toml: criteria"`` gives ``finding-3.toml: criteria[2] (name): ...``.
    """
    if not isinstance(criteria, list) or not criteria:
        raise CriterionError(
            f"{where}: a finding needs at least one criterion; add a [[finding.criteria]] table"
        )
    hints = [h for h in METRIC_HINTS if is_metric(h.replace("_K", "_1"))]
    for i, criterion in enumerate(criteria):
        _validate_one(criterion, arms, is_metric, hints, f"{where}[{i}]")


def _validate_one(
    c: Any,
    arms: Mapping[str, Mapping[str, Any]],
    is_metric: Callable[[str], bool],
    hints: list[str],
    where: str,
) -> None:
    if not isinstance(c, Mapping):
        raise CriterionError(f"{where}: a criterion must be a table, got {c!r}")
    name = c.get("name")
    if not isinstance(name, str) or not name.strip():
        raise CriterionError(f'{where}: needs name = "a short label" (a non-empty string)')
    where = f"{where} ({name})"
    for key in c:
        if key not in KEYS:
            raise CriterionError(
                f"{where}: unknown key {key!r}{_did_you_mean(key, KEYS)} (keys: {', '.join(KEYS)})"
            )
    test = c.get("test")
    if test not in TESTS:
        what = "needs test = ..." if test is None else f"unknown test {test!r}"
        hint = _did_you_mean(test, TESTS) if isinstance(test, str) else ""
        raise CriterionError(f"{where}: {what}{hint} (tests: {', '.join(TESTS)})")
    metric = c.get("metric")
    if not isinstance(metric, str):
        raise CriterionError(
            f'{where}: needs metric = "a per-run metric", e.g. "best_val_accuracy"'
        )
    if not is_metric(metric):
        raise CriterionError(
            f"{where}: unknown metric {metric!r}{_did_you_mean(metric, hints)} "
            f"(metrics: {', '.join(hints)})"
        )
    allowed = {"name", "metric", "test", "largest", *REQUIRED[test], *OPTIONAL.get(test, ())}
    for key in REQUIRED[test]:
        if key not in c:
            raise CriterionError(f"{where}: test {test!r} needs {key!r}; add {_example(key)}")
    for key in c:
        if key not in allowed:
            users = [t for t in TESTS if key in REQUIRED[t] or key in OPTIONAL.get(t, ())]
            raise CriterionError(
                f"{where}: {key!r} does not apply to test {test!r} "
                f"(it is for {', '.join(users)}); remove it"
            )
    if "margin" in c:
        m = c["margin"]
        if not _is_number(m) or not math.isfinite(m) or m <= 0:
            raise CriterionError(
                f"{where}: margin = {m!r} must be a number > 0 (not in quotes), e.g. margin = 0.05"
            )
    if "threshold" in c:
        t = c["threshold"]
        if not _is_number(t) or not math.isfinite(t):
            raise CriterionError(
                f"{where}: threshold = {t!r} must be a finite number (not in quotes), "
                "e.g. threshold = 0.15"
            )
    if "at_least" in c:
        k = c["at_least"]
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise CriterionError(
                f"{where}: at_least = {k!r} must be a whole number of seeds >= 1, e.g. at_least = 2"
            )
    if "also" in c:
        _validate_also(c["also"], is_metric, hints, where)
    _validate_arms(c, arms, where)


def _example(key: str) -> str:
    return {
        "a": 'a = "arm name" or a = {"rule.name" = "fa"}',
        "b": 'b = "arm name" (effect per seed = a - b)',
        "margin": "margin = 0.05",
        "threshold": "threshold = 0.15",
        "at_least": "at_least = 2",
    }[key]


def _validate_also(also: Any, is_metric: Callable[[str], bool], hints: list[str], where: str):
    if not isinstance(also, Mapping) or not also:
        raise CriterionError(
            f"{where}: also = {also!r} must be a table of metric -> minimum, "
            "e.g. also = {flips_lead = 1.0}"
        )
    for metric, value in also.items():
        if not is_metric(metric):
            raise CriterionError(
                f"{where}: also: unknown metric {metric!r}{_did_you_mean(metric, hints)}"
            )
        if not _is_number(value) or not math.isfinite(value):
            raise CriterionError(
                f"{where}: also: {metric} = {value!r} must be a finite number (not in quotes)"
            )


def _validate_arms(c: Mapping[str, Any], arms: Mapping[str, Mapping[str, Any]], where: str):
    sides = {
        side: select_arms(c[side], arms, f"{where}: {side}") for side in ("a", "b") if side in c
    }
    largest = c.get("largest")
    if largest is None:
        for side, picked in sides.items():
            if len(picked) > 1:
                raise CriterionError(
                    f"{where}: {side} = {selector_text(c[side])} picks {len(picked)} arms "
                    f'({", ".join(picked)}); narrow it to one arm, or set largest = "config key"'
                )
    else:
        _validate_largest(largest, c, sides, arms, where)
    if "b" in sides and sides["a"] == sides["b"]:
        raise CriterionError(
            f"{where}: a and b pick the same arms ({', '.join(sides['a'])}), so a - b is 0; "
            "point b at the arm to compare with"
        )


def _validate_largest(largest, c, sides, arms, where):
    if not isinstance(largest, str):
        raise CriterionError(
            f'{where}: largest = {largest!r} must be a config key such as "train.lr"'
        )
    if "also" in c:
        raise CriterionError(f"{where}: also needs a single arm a; remove also or largest")
    if all(len(p) == 1 for p in sides.values()):
        raise CriterionError(
            f"{where}: largest = {largest!r} needs a or b to pick several arms, e.g. "
            'a = {"rule.name" = "fa"}; remove largest or widen the selector'
        )
    keys = sorted({k for config in arms.values() for k in config})
    for side, picked in sides.items():
        for arm in picked:
            if largest not in arms[arm]:
                raise CriterionError(
                    f"{where}: largest = {largest!r} is not a config key of arm {arm!r}"
                    f"{_did_you_mean(largest, keys)}"
                )
            if not _is_number(arms[arm][largest]):
                raise CriterionError(
                    f"{where}: largest = {largest!r} needs numbers, but arm {arm!r} ({side}) has "
                    f"{arms[arm][largest]!r}; use a numeric config key such as train.lr"
                )


# ---------------------------------------------------------------------------- evaluation


def evaluate(
    criteria: list[dict],
    summary: xr.Dataset,
    level: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
    arms: dict[str, dict[str, Any]] | None = None,
) -> list[dict]:
    """One result dict per criterion (see :func:`evaluate_one`).

    Selectors resolve against ``arms`` (arm -> flat config, as given to validate_criteria)
    when given, else against the summary's coords on ``arm``, which hold only the config keys
    that vary; pass ``arms`` when a selector may name a key every arm shares.
    """
    arms = summary_arms(summary) if arms is None else arms
    return [evaluate_one(c, summary, arms, level, n_boot, seed) for c in criteria]


def evaluate_one(
    c: Mapping[str, Any],
    summary: xr.Dataset,
    arms: Mapping[str, Mapping[str, Any]],
    level: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
) -> dict:
    """The criterion's per-seed values, effect, CI, verdict and a one-sentence account."""
    where = f"criterion {c.get('name')!r}"
    test, metric = c["test"], c["metric"]
    seeds = [_plain(s) for s in summary["seed"].values]
    notes: list[str] = []
    if metric not in summary.data_vars:
        notes.append(f"metric {metric!r} is not in the summary")
    values = {
        side: _side_values(c, side, summary, arms, where, notes) for side in ("a", "b") if side in c
    }
    per_seed = values["a"] - values["b"] if "b" in values else values["a"]
    finite = per_seed[np.isfinite(per_seed)]
    n = int(finite.size)
    result = {
        "name": c["name"],
        "test": test,
        "metric": metric,
        "a": selector_text(c["a"]),
        "b": selector_text(c["b"]) if "b" in c else "",
        "seeds": seeds,
        "per_seed": [float(v) for v in per_seed],
        "n": n,
    }
    if test == "count":
        result.update(_count(c, summary, per_seed, arms, where, notes))
    else:
        effect = float(finite.mean()) if n else math.nan
        low, high = bootstrap_ci(finite, n=n_boot, level=level, seed=seed) if n else (math.nan,) * 2
        verdict, reason = _ci_verdict(c, low, high, n)
        result.update(effect=effect, low=low, high=high, verdict=verdict)
        if reason and metric in summary.data_vars:
            notes.append(reason)
    result["text"] = _sentence(c, result, len(seeds), notes)
    return result


def _side_values(c, side, summary, arms, where, notes) -> np.ndarray:
    """Per-seed values of one side: the arm's metric, or with `largest` the largest key value
    among the side's arms whose metric is above LARGEST_ABOVE at that seed."""
    n_seeds = summary.sizes["seed"]
    metric = c["metric"]
    picked = select_arms(c[side], arms, f"{where}: {side}")
    if metric not in summary.data_vars:
        return np.full(n_seeds, np.nan)
    names = [str(a) for a in summary["arm"].values]
    missing = [p for p in picked if p not in names]
    if missing:
        raise CriterionError(f"{where}: arm {missing[0]!r} is not in the summary (arms: {names})")
    grid = summary[metric].transpose("arm", "seed").values.astype(float)
    rows = grid[[names.index(p) for p in picked]]
    key = c.get("largest")
    if key is None:
        return rows[0]
    if any(key not in arms[p] for p in picked):
        raise CriterionError(
            f"{where}: the summary has no config values for {key!r}; pass arms= to evaluate"
        )
    keyvals = np.array([float(arms[p][key]) for p in picked])
    out = np.full(n_seeds, np.nan)
    none_seeds, unknown_seeds = [], []
    for s in range(n_seeds):
        col = rows[:, s]
        ok = np.isfinite(col) & (col > LARGEST_ABOVE)
        best = keyvals[ok].max() if ok.any() else -math.inf
        # An arm with a larger value whose metric is unknown could be the largest one.
        if np.any(~np.isfinite(col) & (keyvals > best)):
            unknown_seeds.append(_seed_label(summary, s))
        elif ok.any():
            out[s] = best
        else:
            none_seeds.append(_seed_label(summary, s))
    text = selector_text(c[side])
    if none_seeds:
        notes.append(
            f"no {text} arm has {metric} > {LARGEST_ABOVE} at seed {', '.join(none_seeds)}"
        )
    if unknown_seeds:
        notes.append(f"{text}: {metric} unknown at a larger {key}, seed {', '.join(unknown_seeds)}")
    return out


def _seed_label(summary: xr.Dataset, index: int) -> str:
    return str(_plain(summary["seed"].values[index]))


def _ci_verdict(c: Mapping[str, Any], low: float, high: float, n: int) -> tuple[str, str]:
    """The contract's CI rules; returns (verdict, why it is inconclusive or '')."""
    if n < 2 or not (math.isfinite(low) and math.isfinite(high)):
        return INCONCLUSIVE, f"n={n}, needs at least 2 seeds"
    test = c["test"]
    if test == "within":
        m = float(c["margin"])
        if -m <= low and high <= m:
            return REPRODUCED, ""
        if low > m or high < -m:
            return NOT_REPRODUCED, ""
        return INCONCLUSIVE, f"the CI straddles ±{m:g}"
    bound = 0.0 if test in PAIRED else float(c["threshold"])
    below = test in ("less", "below")
    if (high < bound) if below else (low > bound):
        return REPRODUCED, ""
    if (low >= bound) if below else (high <= bound):
        return NOT_REPRODUCED, ""
    return INCONCLUSIVE, f"the CI straddles {bound:g}"


def _count(c, summary, values, arms, where, notes) -> dict:
    """Seeds meeting threshold (and every `also`): definite yes, definite no, or unknown."""
    conds = [(values, float(c["threshold"]))]
    if "also" in c:
        arm = select_arms(c["a"], arms, f"{where}: a")[0]
        names = [str(a) for a in summary["arm"].values]
        for metric, minimum in c["also"].items():
            if metric in summary.data_vars and arm in names:
                v = summary[metric].transpose("arm", "seed").values[names.index(arm)]
            else:
                notes.append(f"also: metric {metric!r} is not in the summary")
                v = np.full(values.shape, np.nan)
            conds.append((np.asarray(v, dtype=float), float(minimum)))
    fails = np.zeros(values.shape, bool)
    known = np.ones(values.shape, bool)
    for v, minimum in conds:
        fails |= np.isfinite(v) & (v < minimum)
        known &= np.isfinite(v)
    met = int((known & ~fails).sum())
    missing = int((~known & ~fails).sum())
    need = int(c["at_least"])
    if met >= need:
        verdict = REPRODUCED
    elif met + missing < need:
        verdict = NOT_REPRODUCED
    else:
        verdict = INCONCLUSIVE
    return {
        "effect": float(met),
        "low": float(met),
        "high": float(met + missing),
        "met": met,
        "missing": missing,
        "verdict": verdict,
    }


def _sentence(c, r, n_seeds: int, notes: list[str]) -> str:
    metric, test = c["metric"], c["test"]
    subject = metric if "largest" not in c else f"largest {c['largest']} with {metric} > 0.5,"
    if test == "count":
        extra = "".join(f" and {m} >= {v:g}" for m, v in c.get("also", {}).items())
        statement = (
            f"{subject} {r['a']} >= {c['threshold']:g}{extra} in {r['met']} of {n_seeds} seeds"
            f" ({r['missing']} missing), needs {c['at_least']}"
        )
        if r["verdict"] == INCONCLUSIVE:
            notes = [*notes, "the missing seeds decide"]
    else:
        lhs = f"{r['a']} - {r['b']}" if r["b"] else r["a"]
        of = f" of {n_seeds}" if r["n"] < n_seeds else ""
        rule = {
            "within": f"within ±{c.get('margin', 0):g}",
            "less": "< 0",
            "greater": "> 0",
            "below": f"below {c.get('threshold', 0):g}",
            "above": f"above {c.get('threshold', 0):g}",
        }[test]
        statement = (
            f"{subject} {lhs} = {_num(r['effect'])} [{_num(r['low'])}, {_num(r['high'])}]"
            f" (n={r['n']}{of}), {rule}"
        )
    why = f" ({'; '.join(notes)})" if notes else ""
    return f"{statement}: {r['verdict']}{why}"


# ---------------------------------------------------------------------------- finding


def combine(results: list[dict]) -> str:
    """The finding's verdict: reproduced only if every criterion is; not reproduced if any is
    not; otherwise (or with no criteria) inconclusive."""
    verdicts = [r["verdict"] for r in results]
    if verdicts and all(v == REPRODUCED for v in verdicts):
        return REPRODUCED
    if NOT_REPRODUCED in verdicts:
        return NOT_REPRODUCED
    return INCONCLUSIVE


def format_effect(result: Mapping[str, Any]) -> str:
    """The effect for a table cell: ``-0.012 [-0.03, 0.004]``, or ``2/3 seeds (1 missing)``."""
    if result["test"] == "count":
        total = len(result.get("per_seed", []))
        missing = f" ({result['missing']} missing)" if result.get("missing") else ""
        return f"{result['met']}/{total} seeds{missing}"
    return f"{_num(result['effect'])} [{_num(result['low'])}, {_num(result['high'])}]"
