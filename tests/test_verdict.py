"""dynalign.analyses.verdict: criteria checked before any run, verdicts on synthetic summaries whose
answers are known by construction."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import xarray as xr

from dynalign.analyses.smoothing import bootstrap_ci
from dynalign.analyses.verdict import (
    INCONCLUSIVE,
    NOT_REPRODUCED,
    REPRODUCED,
    CriterionError,
    combine,
    evaluate,
    format_effect,
    validate_criteria,
)

METRICS = {"best_val_accuracy", "final_val_accuracy", "stable", "flips_lead", "diverged"}


def is_metric(name: str) -> bool:
    return name in METRICS or re.fullmatch(r"(train|val)_accuracy_epoch_[1-9]\d*", name) is not None


def summary(arms: dict[str, dict], values: dict[str, dict[str, list[float]]], seeds=(0, 1, 2)):
    """A (arm, seed) Dataset: values[metric][arm] = per-seed list; config keys as arm coords."""
    names = list(arms)
    keys = sorted({k for c in arms.values() for k in c})
    data = {
        m: (("arm", "seed"), np.array([per_arm[a] for a in names], dtype=float))
        for m, per_arm in values.items()
    }
    coords = {"arm": names, "seed": list(seeds)}
    coords.update({k: ("arm", [arms[a][k] for a in names]) for k in keys})
    return xr.Dataset(data, coords=coords)


TWO = {"bp": {"rule.name": "bp", "train.lr": 0.1}, "fa": {"rule.name": "fa", "train.lr": 0.1}}


def one(criterion: dict, ds: xr.Dataset, **kw) -> dict:
    (result,) = evaluate([criterion], ds, **kw)
    return result


def within(**kw) -> dict:
    return {
        "name": "comparable",
        "metric": "best_val_accuracy",
        "test": "within",
        "a": "fa",
        "b": "bp",
        "margin": 0.05,
        **kw,
    }


# ------------------------------------------------------------------------------ evaluation


def test_within_reproduced_effect_ci_and_text():
    bp = [0.80, 0.82, 0.81]
    fa = [0.79, 0.80, 0.80]
    ds = summary(TWO, {"best_val_accuracy": {"bp": bp, "fa": fa}})
    r = one(within(), ds)
    diffs = np.array(fa) - np.array(bp)
    assert r["per_seed"] == pytest.approx(diffs.tolist())
    assert r["effect"] == pytest.approx(diffs.mean())
    assert (r["low"], r["high"]) == pytest.approx(bootstrap_ci(diffs, n=2000, seed=0))
    assert r["n"] == 3 and r["a"] == "fa" and r["b"] == "bp"
    assert r["verdict"] == REPRODUCED
    assert r["text"] == (
        f"best_val_accuracy fa - bp = {diffs.mean():.3g} [{r['low']:.3g}, {r['high']:.3g}] "
        "(n=3), within ±0.05: reproduced"
    )
    assert format_effect(r) == f"{diffs.mean():.3g} [{r['low']:.3g}, {r['high']:.3g}]"


def test_within_not_reproduced_when_ci_outside_margin():
    ds = summary(TWO, {"best_val_accuracy": {"bp": [0.8, 0.8, 0.8], "fa": [0.6, 0.62, 0.61]}})
    r = one(within(), ds)
    assert r["high"] < -0.05
    assert r["verdict"] == NOT_REPRODUCED


@pytest.mark.parametrize(
    "fa, verdict",
    [
        ([0.90, 0.91, 0.92], NOT_REPRODUCED),  # fa - bp ~ +0.11: the CI lies above +margin
        ([0.83, 0.87, 0.85], INCONCLUSIVE),  # ~ +0.05: the CI straddles +margin
        ([0.80, 0.81, 0.79], REPRODUCED),
    ],
)
def test_within_checks_both_ends_of_the_margin(fa, verdict):
    ds = summary(TWO, {"best_val_accuracy": {"bp": [0.8] * 3, "fa": fa}})
    assert one(within(), ds)["verdict"] == verdict


def test_a_tie_is_not_reproduced_for_strict_tests():
    """CI [0, 0] is no evidence that a < b (low >= 0), nor that a is below its own value."""
    ds = summary(TWO, {"best_val_accuracy": {"bp": [0.5] * 3, "fa": [0.5] * 3}})
    c = {"name": "x", "metric": "best_val_accuracy", "test": "less", "a": "fa", "b": "bp"}
    assert (one(c, ds)["low"], one(c, ds)["high"]) == (0.0, 0.0)
    assert one(c, ds)["verdict"] == NOT_REPRODUCED
    assert one({**c, "test": "greater"}, ds)["verdict"] == NOT_REPRODUCED
    single = {"name": "y", "metric": "best_val_accuracy", "a": "fa", "threshold": 0.5}
    assert one({**single, "test": "below"}, ds)["verdict"] == NOT_REPRODUCED
    assert one({**single, "test": "above"}, ds)["verdict"] == NOT_REPRODUCED


def test_less_not_reproduced_when_a_is_clearly_larger():
    ds = summary(TWO, {"best_val_accuracy": {"bp": [0.5, 0.5, 0.5], "fa": [0.7, 0.72, 0.71]}})
    c = {"name": "fa slower", "metric": "best_val_accuracy", "test": "less", "a": "fa", "b": "bp"}
    r = one(c, ds)
    assert r["low"] >= 0.2 - 1e-9
    assert r["verdict"] == NOT_REPRODUCED
    assert "< 0: not reproduced" in r["text"]
    # The same data reproduce the mirror test.
    assert one({**c, "test": "greater"}, ds)["verdict"] == REPRODUCED


def test_straddling_ci_is_inconclusive_and_says_why():
    ds = summary(TWO, {"best_val_accuracy": {"bp": [0.5, 0.5, 0.5], "fa": [0.4, 0.6, 0.55]}})
    c = {"name": "x", "metric": "best_val_accuracy", "test": "less", "a": "fa", "b": "bp"}
    r = one(c, ds)
    assert r["low"] < 0 < r["high"]
    assert r["verdict"] == INCONCLUSIVE
    assert r["text"].endswith("inconclusive (the CI straddles 0)")


def test_one_finite_seed_is_inconclusive_and_nan_is_dropped():
    ds = summary(TWO, {"best_val_accuracy": {"bp": [0.8, np.nan], "fa": [0.79, 0.5]}}, seeds=(0, 1))
    r = one(within(), ds)
    assert r["n"] == 1
    assert r["per_seed"][0] == pytest.approx(-0.01) and math.isnan(r["per_seed"][1])
    assert r["effect"] == pytest.approx(-0.01)
    assert math.isnan(r["low"]) and math.isnan(r["high"])
    assert r["verdict"] == INCONCLUSIVE
    assert "(n=1 of 2)" in r["text"] and "needs at least 2 seeds" in r["text"]


def test_missing_metric_is_inconclusive_with_reason():
    ds = summary(TWO, {"final_val_accuracy": {"bp": [0.8] * 3, "fa": [0.8] * 3}})
    r = one(within(), ds)
    assert r["n"] == 0 and all(math.isnan(v) for v in r["per_seed"])
    assert r["verdict"] == INCONCLUSIVE
    assert "metric 'best_val_accuracy' is not in the summary" in r["text"]


def test_below_and_above_use_the_threshold():
    ds = summary(TWO, {"best_val_accuracy": {"bp": [0.9] * 3, "fa": [0.10, 0.11, 0.12]}})
    c = {"name": "low", "metric": "best_val_accuracy", "test": "below", "a": "fa"}
    assert one({**c, "threshold": 0.15}, ds)["verdict"] == REPRODUCED
    assert one({**c, "threshold": 0.10}, ds)["verdict"] == NOT_REPRODUCED
    assert one({**c, "threshold": 0.11}, ds)["verdict"] == INCONCLUSIVE
    r = one({**c, "test": "above", "threshold": 0.05}, ds)
    assert r["verdict"] == REPRODUCED and r["b"] == ""
    assert r["effect"] == pytest.approx(0.11)
    assert "best_val_accuracy fa = 0.11" in r["text"] and "above 0.05" in r["text"]


def count(**kw) -> dict:
    return {
        "name": "stable",
        "metric": "stable",
        "test": "count",
        "a": "fa",
        "threshold": 1.0,
        "at_least": 2,
        **kw,
    }


@pytest.mark.parametrize(
    "fa, verdict, met, missing",
    [
        ([1.0, 1.0, 0.0], REPRODUCED, 2, 0),
        ([1.0, np.nan, 0.0], INCONCLUSIVE, 1, 1),  # the missing seed decides
        ([1.0, 0.0, 0.0], NOT_REPRODUCED, 1, 0),
        ([np.nan, np.nan, 0.0], INCONCLUSIVE, 0, 2),
        ([0.0, np.nan, 0.0], NOT_REPRODUCED, 0, 1),  # even a success would leave 1 < 2
    ],
)
def test_count_with_missing_seeds(fa, verdict, met, missing):
    ds = summary(TWO, {"stable": {"bp": [1.0] * 3, "fa": fa}})
    r = one(count(), ds)
    assert (r["verdict"], r["met"], r["missing"]) == (verdict, met, missing)
    assert r["effect"] == met and r["high"] == met + missing
    assert f"in {met} of 3 seeds ({missing} missing), needs 2: {verdict}" in r["text"]
    assert format_effect(r).startswith(f"{met}/3 seeds")


def test_count_also_conditions_are_all_required():
    ds = summary(
        TWO,
        {
            "stable": {"bp": [1.0] * 3, "fa": [1.0, 1.0, 1.0]},
            "flips_lead": {"bp": [0.0] * 3, "fa": [1.0, 0.0, np.nan]},
        },
    )
    r = one(count(also={"flips_lead": 1.0}), ds)
    # seed 0 meets both, seed 1 fails flips_lead, seed 2 is unknown -> 1 + 1 >= 2: undecided
    assert (r["met"], r["missing"], r["verdict"]) == (1, 1, INCONCLUSIVE)
    assert "and flips_lead >= 1" in r["text"]
    assert one(count(also={"flips_lead": 1.0}, at_least=1), ds)["verdict"] == REPRODUCED
    r = one(count(also={"diverged": 0.0}), ds.drop_vars("flips_lead"))
    assert r["missing"] == 3 and "also: metric 'diverged' is not in the summary" in r["text"]
    assert one(count(also={"flips_lead": 1.0}, at_least=3), ds)["verdict"] == NOT_REPRODUCED
    # A failed main condition is a definite no even where `also` is unknown.
    ds["stable"].loc[{"arm": "fa", "seed": 2}] = 0.0
    assert one(count(also={"flips_lead": 1.0}), ds)["verdict"] == NOT_REPRODUCED


LRS = (0.01, 0.1, 1.0)
GRID = {
    f"rule={rule},lr={lr}": {"rule.name": rule, "train.lr": lr}
    for rule in ("bp", "fa")
    for lr in LRS
}


def lr_summary(stable_bp: list[list[float]], stable_fa: list[list[float]]) -> xr.Dataset:
    """stable_X[i] = per-seed stability of the arm with learning rate LRS[i]."""
    per_arm = {f"rule=bp,lr={lr}": s for lr, s in zip(LRS, stable_bp, strict=True)}
    per_arm |= {f"rule=fa,lr={lr}": s for lr, s in zip(LRS, stable_fa, strict=True)}
    return summary(GRID, {"stable": per_arm})


LARGEST = {
    "name": "fa's largest stable lr is lower",
    "metric": "stable",
    "test": "less",
    "a": {"rule.name": "fa"},
    "b": {"rule.name": "bp"},
    "largest": "train.lr",
}


def test_largest_stable_lr_fa_lower_than_bp():
    ds = lr_summary(
        # bp stable at every lr; fa stable up to 0.1, except seed 2 where only up to 0.01
        [[1, 1, 1], [1, 1, 1], [1, 1, 1]],
        [[1, 1, 1], [1, 1, 0], [0, 0, 0]],
    )
    validate_criteria([LARGEST], GRID, is_metric)
    r = one(LARGEST, ds)
    assert r["per_seed"] == pytest.approx([0.1 - 1.0, 0.1 - 1.0, 0.01 - 1.0])
    assert r["verdict"] == REPRODUCED
    assert r["a"] == "rule.name=fa" and r["b"] == "rule.name=bp"
    assert r["text"].startswith("largest train.lr with stable > 0.5, rule.name=fa - rule.name=bp")
    assert one({**LARGEST, "test": "greater"}, ds)["verdict"] == NOT_REPRODUCED


def test_largest_with_no_stable_arm_or_an_unknown_larger_arm_is_nan():
    ds = lr_summary(
        [[1, 1, 1], [1, 1, 1], [1, 1, 1]],
        # seed 0: nothing stable -> NaN; seed 1: lr 1.0 unknown, it could be the largest -> NaN;
        # seed 2: 0.1 stable and 1.0 known unstable -> 0.1
        [[0, 1, 1], [0, np.nan, 1], [0, np.nan, 0]],
    )
    r = one(LARGEST, ds)
    assert math.isnan(r["per_seed"][0]) and math.isnan(r["per_seed"][1])
    assert r["per_seed"][2] == pytest.approx(0.1 - 1.0)
    assert r["n"] == 1 and r["verdict"] == INCONCLUSIVE
    assert "no rule.name=fa arm has stable > 0.5 at seed 0" in r["text"]
    assert "rule.name=fa: stable unknown at a larger train.lr, seed 1" in r["text"]


def test_selectors_by_config_values():
    arms = {
        f"rule={r},depth={d}": {"rule.name": r, "model.depth": d}
        for r in ("bp", "fa")
        for d in (3, 8)
    }
    acc = {"rule=bp,depth=3": 0.8, "rule=bp,depth=8": 0.7, "rule=fa,depth=3": 0.75}
    acc["rule=fa,depth=8"] = 0.2
    ds = summary(arms, {"best_val_accuracy": {a: [v, v + 0.01, v - 0.01] for a, v in acc.items()}})
    c = {
        "name": "deep fa fails",
        "metric": "best_val_accuracy",
        "test": "less",
        "a": {"rule.name": "fa", "model.depth": 8},
        "b": {"rule.name": "bp", "model.depth": 8},
    }
    validate_criteria([c], arms, is_metric)
    r = one(c, ds)
    assert r["effect"] == pytest.approx(0.2 - 0.7)
    assert r["a"] == "rule.name=fa,model.depth=8"
    assert r["verdict"] == REPRODUCED
    # Resolving against full configs (a key no summary coord holds) gives the same answer.
    full = {a: {**cfg, "train.epochs": 5} for a, cfg in arms.items()}
    r2 = one({**c, "a": {**c["a"], "train.epochs": 5}}, ds, arms=full)
    assert r2["per_seed"] == pytest.approx(r["per_seed"])


def test_combine():
    rep, no, inc = ({"verdict": v} for v in (REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE))
    assert combine([rep, rep]) == REPRODUCED
    assert combine([rep, inc]) == INCONCLUSIVE
    assert combine([rep, inc, no]) == NOT_REPRODUCED
    assert combine([]) == INCONCLUSIVE


def test_evaluate_returns_one_result_per_criterion_in_order():
    ds = summary(TWO, {"best_val_accuracy": {"bp": [0.8] * 3, "fa": [0.79, 0.8, 0.81]}})
    names = [r["name"] for r in evaluate([within(name="one"), within(name="two")], ds)]
    assert names == ["one", "two"]


# ------------------------------------------------------------------------------ validation


def bad(criteria, arms=TWO) -> str:
    with pytest.raises(CriterionError) as info:
        validate_criteria(criteria, arms, is_metric, where="finding-3.toml: criteria")
    message = str(info.value)
    assert "\n" not in message
    return message


def test_valid_criteria_pass():
    validate_criteria([within(), count(also={"flips_lead": 1.0})], TWO, is_metric)
    validate_criteria([within(metric="val_accuracy_epoch_5")], TWO, is_metric)


def test_empty_list():
    assert "a finding needs at least one criterion" in bad([])


def test_unknown_test_suggests_the_close_one():
    msg = bad([within(), within(test="withn")])
    assert msg.startswith("finding-3.toml: criteria[1] (comparable): unknown test 'withn'")
    assert "did you mean 'within'?" in msg


def test_unknown_metric_suggests_the_close_one():
    msg = bad([within(metric="best_val_acuracy")])
    assert "criteria[0] (comparable): unknown metric 'best_val_acuracy'" in msg
    assert "did you mean 'best_val_accuracy'?" in msg


def test_b_missing_and_b_forbidden():
    c = within()
    del c["b"]
    assert "test 'within' needs 'b'; add b = " in bad([c])
    msg = bad([{"name": "n", "metric": "stable", "test": "below", "a": "fa"}])
    assert "needs 'threshold'" in msg
    c = {"name": "n", "metric": "stable", "test": "below", "a": "fa", "b": "bp", "threshold": 1}
    msg = bad([c])
    assert "'b' does not apply to test 'below' (it is for within, less, greater); remove it" in msg


@pytest.mark.parametrize("margin", [-0.05, 0, "0.05", float("nan"), True])
def test_margin_must_be_a_positive_number(margin):
    msg = bad([within(margin=margin)])
    assert f"margin = {margin!r} must be a number > 0" in msg


def test_threshold_at_least_and_also_types():
    assert "threshold = '1' must be a finite number" in bad([count(threshold="1")])
    assert "at_least = 0 must be a whole number" in bad([count(at_least=0)])
    assert "at_least = 1.5 must be a whole number" in bad([count(at_least=1.5)])
    msg = bad([count(also={"flip_lead": 1.0})])
    assert "also: unknown metric 'flip_lead'; did you mean 'flips_lead'?" in msg
    assert "also: flips_lead = 'yes' must be a finite number" in bad(
        [count(also={"flips_lead": "yes"})]
    )
    assert "'also' does not apply to test 'within'" in bad([within(also={"flips_lead": 1.0})])


def test_unknown_key_suggests_the_close_one():
    msg = bad([within(treshold=0.1)])
    assert "unknown key 'treshold'; did you mean 'threshold'?" in msg


def test_missing_name_and_non_table():
    assert "criteria[0]: needs name = " in bad([{"metric": "stable", "test": "count"}])
    assert "criteria[0]: a criterion must be a table" in bad(["within"])


def test_arm_name_typo():
    msg = bad([within(a="FA")])
    assert "(comparable): a: no arm is named 'FA'" in msg
    assert "did you mean 'fa'?" in msg and "(arms: bp, fa)" in msg


def test_arm_name_typo_in_longer_names():
    arms = {"fa-bn": {"rule.name": "fa"}, "bp-bn": {"rule.name": "bp"}}
    msg = bad([within(a="fa-nb", b="bp-bn")], arms)
    assert "a: no arm is named 'fa-nb'; did you mean 'fa-bn'? (arms: fa-bn, bp-bn)" in msg


def test_selector_matching_nothing():
    msg = bad([within(a={"rule.name": "Fa"})])
    assert "a: no arm has rule.name = 'Fa' (values: 'bp', 'fa'); did you mean 'fa'?" in msg
    msg = bad([within(a={"rule.nam": "fa"})])
    assert "'rule.nam' is not a config key of any arm; did you mean 'rule.name'?" in msg
    arms = {"d3": {"model.depth": 3}, "d8": {"model.depth": 8}}
    msg = bad([within(a={"model.depth": "8"}, b="d3")], arms)
    assert (
        "no arm has model.depth = '8' (values: 3, 8); did you mean 8 (a int, not a string)" in msg
    )


def test_selector_matching_several_without_largest():
    c = {k: v for k, v in LARGEST.items() if k != "largest"}
    msg = bad([c], GRID)
    assert "a = rule.name=fa picks 3 arms (rule=fa,lr=0.01, rule=fa,lr=0.1, rule=fa,lr=1.0)" in msg
    assert 'set largest = "config key"' in msg


def test_largest_misuse():
    assert "needs a or b to pick several arms" in bad([within(largest="train.lr")])
    msg = bad([{**LARGEST, "largest": "train.l"}], GRID)
    assert "'train.l' is not a config key of arm 'rule=fa,lr=0.01'; did you mean 'train.lr'?" in msg
    msg = bad([{**LARGEST, "largest": "rule.name"}], GRID)
    assert "largest = 'rule.name' needs numbers" in msg


def test_a_and_b_the_same_arm():
    assert "a and b pick the same arms (fa)" in bad([within(b={"rule.name": "fa"})])
