"""The shipped finding specs (dynalign/findings/finding-N.toml): each loads at both scales, its
criteria validate against its arms, its arm names are unique and safe as directory names, and
every point builds a config that passes the config checks. Nothing here trains a network."""

from __future__ import annotations

from importlib import resources

import numpy as np
import pytest
import tomllib
import xarray as xr

from dynalign.analyses.reproduce import criteria_metrics, finding_numbers, load_finding
from dynalign.analyses.study import is_metric
from dynalign.analyses.verdict import INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED, combine, evaluate
from dynalign.config import EMBEDDED_DATA, check_consistency, from_json
from dynalign.spec import SAFE_NAME

NUMBERS = list(range(1, 9))
SCALES = ("quick", "full")
#: findings on image classification data: Fashion-MNIST at full scale
IMAGE_FINDINGS = (1, 2, 3, 4, 8)


def raw(number: int) -> dict:
    path = resources.files("dynalign") / "findings" / f"finding-{number}.toml"
    with path.open("rb") as fh:
        return tomllib.load(fh)


def test_all_eight_findings_are_shipped():
    assert finding_numbers() == NUMBERS


@pytest.mark.parametrize("number", NUMBERS)
@pytest.mark.parametrize("scale", SCALES)
def test_finding_loads_expands_and_its_criteria_validate(number, scale):
    spec = load_finding(number, scale=scale)  # validates the criteria against the arms
    assert spec.name == f"finding-{number}"
    assert spec.finding["number"] == number
    assert spec.finding["title"].strip() and spec.finding["claim"].strip()
    assert spec.seeds == [0, 1, 2]
    criteria = spec.finding["criteria"]
    assert criteria, "a finding needs at least one criterion"
    assert all(is_metric(m) for m in criteria_metrics(criteria))
    names = [c["name"] for c in criteria]
    assert len(names) == len(set(names)), "criterion names label the report's rows"
    assert len(spec.points) == len(spec.arms) * len(spec.seeds)


@pytest.mark.parametrize("number", NUMBERS)
def test_arm_names_are_unique_short_and_safe(number):
    arms = [a.name for a in load_finding(number).arms]
    assert len(arms) == len(set(arms))
    for name in arms:
        assert SAFE_NAME.fullmatch(name), name
        assert len(name) <= 40, name


@pytest.mark.parametrize("number", NUMBERS)
@pytest.mark.parametrize("scale", SCALES)
def test_every_point_builds_a_valid_config(number, scale):
    for point in load_finding(number, scale=scale).points:
        config = point.config
        check_consistency(config)
        assert from_json(config.to_json()) == config
        assert config.train.seed == point.seed
        assert config.train.threads is None, "the sweep sets threads, not the spec"


@pytest.mark.parametrize("number", NUMBERS)
def test_quick_scale_needs_no_download(number):
    for point in load_finding(number, scale="quick").points:
        assert point.config.data.name in EMBEDDED_DATA


@pytest.mark.parametrize("number", IMAGE_FINDINGS)
def test_full_scale_is_the_studys_fashion_mnist_protocol(number):
    n_train = 1000 if number == 3 else 10000  # finding 3: 1,000 images, as the study
    for point in load_finding(number, scale="full").points:
        data = point.config.data
        assert (data.name, data.n_train, data.n_val) == ("fashion-mnist", n_train, 1000)
        assert point.config.train.epochs == 60


@pytest.mark.parametrize("number", sorted(set(NUMBERS) - set(IMAGE_FINDINGS)))
def test_full_scale_keeps_the_other_findings_on_their_data_and_longer(number):
    """RNN (text), autoencoder (patches) and Dale (digits) stay on their data at full scale."""
    quick = load_finding(number, scale="quick").points
    full = load_finding(number, scale="full").points
    for q, f in zip(quick, full, strict=True):
        assert f.config.data.name == q.config.data.name
        assert f.config.train.epochs >= q.config.train.epochs


def test_issue_arms_are_there():
    """The arms the issue asks for: batch sizes 2-100 and several momenta (3), an lr range for
    both rules with the study's sigmoid RNN (5), both constraint levels under BP and FA (7)."""
    f3 = load_finding(3)
    batch = {a.name: p.config for a in f3.arms for p in f3.points if p.arm == a.name}
    sizes = {c.train.batch_size for c in batch.values()}
    assert min(sizes) == 2 and max(sizes) == 100
    for kind in ("running_prev", "running_incl"):
        momenta = {c.model.bn_momentum for c in batch.values() if c.model.batch_norm == kind}
        assert len(momenta) >= 2
    f5 = load_finding(5)
    rnn = [p.config for p in f5.points]
    assert {c.model.kind for c in rnn} == {"rnn"}
    assert {c.model.activation for c in rnn} == {"sigmoid"}
    assert {c.data.name for c in rnn} == {"text"}
    for rule in ("bp", "fa"):
        assert len({c.train.lr for c in rnn if c.rule.name == rule}) >= 3
    f7 = {(p.config.constraint.sign, p.config.rule.name) for p in load_finding(7).points}
    assert f7 == {(s, r) for s in ("synapse", "neuron", "none") for r in ("bp", "fa")}


def test_finding_7_runs_where_the_loss_does_not_explode():
    """The dale-* presets' lr 0.2 explodes; finding 7 trains at a lower lr and guards the loss."""
    spec = load_finding(7)
    assert all(p.config.train.lr <= 0.05 for p in spec.points)
    guards = [c for c in spec.finding["criteria"] if c["metric"] == "max_train_loss"]
    constrained = {a.name for a in spec.arms if not a.name.startswith("none")}
    assert {c["a"] for c in guards} == constrained


def test_specs_carry_only_the_contracts_entries():
    for number in NUMBERS:
        data = raw(number)
        assert "n_seeds" in data and "seeds" not in data
        assert set(data["scale"]) <= {"quick", "full"}


def synthetic_summary(spec, values) -> xr.Dataset:
    """A summary (arm x seed) with every metric the criteria read, as analyses.study makes it."""
    arms = [a.name for a in spec.arms]
    metrics = criteria_metrics(spec.finding["criteria"])
    shape = (len(arms), len(spec.seeds))
    data = {m: (("arm", "seed"), values(m, shape)) for m in metrics}
    data["status"] = (("arm", "seed"), np.full(shape, "completed", dtype=object))
    return xr.Dataset(data, coords={"arm": arms, "seed": spec.seeds})


@pytest.mark.parametrize("number", NUMBERS)
def test_criteria_evaluate_to_a_verdict(number):
    """Every criterion of every finding runs through the verdict code on made-up numbers."""
    spec = load_finding(number)
    rng = np.random.default_rng(number)
    summary = synthetic_summary(spec, lambda m, shape: rng.uniform(0.0, 1.0, shape))
    results = evaluate(spec.finding["criteria"], summary, arms=spec.arm_configs())
    assert len(results) == len(spec.finding["criteria"])
    for r in results:
        assert r["verdict"] in (REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE)
        assert r["text"]
    assert combine(results) in (REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE)


def test_largest_stable_lr_reads_the_grid():
    """Finding 5: FA stable up to 0.3 and BP up to 3 at every seed -> FA's largest is lower."""
    spec = load_finding(5)
    configs = spec.arm_configs()

    def values(metric, shape):
        out = np.zeros(shape)
        for i, arm in enumerate(a.name for a in spec.arms):
            c = configs[arm]
            if metric == "stable":
                edge = 0.3 if c["rule.name"] == "fa" else 3.0
                out[i] = 1.0 if c["train.lr"] <= edge else 0.0
            else:
                out[i] = 0.3 if c["rule.name"] == "bp" else 0.29
        return out

    criteria = spec.finding["criteria"]
    results = evaluate(criteria, synthetic_summary(spec, values), arms=configs)
    largest = next(r for r, c in zip(results, criteria, strict=True) if "largest" in c)
    assert np.allclose(largest["per_seed"], 0.3 - 3.0)
    assert largest["verdict"] == REPRODUCED
