"""Study specs: expansion into arms and seeds, and bad specs refused before anything runs."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from dynalign.cli.main import cli
from dynalign.spec import SpecError, load_spec, parse_spec

TINY = """
[model]
depth = 2
width = 16
[data]
n_train = 100
n_val = 50
[train]
epochs = 1
"""


def test_grid_crosses_keys_and_names_arms_by_the_keys_that_vary():
    spec = parse_spec(
        "seeds = [3, 5]\n"
        + TINY
        + """
[grid]
"rule.name" = ["bp", "fa"]
"model.depth" = [2, 4]
"model.batch_norm" = ["standard"]
"""
    )
    assert [a.name for a in spec.arms] == [
        "rule=bp,depth=2",
        "rule=bp,depth=4",
        "rule=fa,depth=2",
        "rule=fa,depth=4",
    ]
    assert spec.dims == {
        "rule.name": "rule",
        "model.depth": "depth",
        "model.batch_norm": "batch_norm",
    }
    assert len(spec.points) == 8
    point = next(p for p in spec.points if p.arm == "rule=fa,depth=4" and p.seed == 5)
    c = point.config
    assert (c.rule.name, c.model.depth, c.model.batch_norm, c.train.seed) == (
        "fa",
        4,
        "standard",
        5,
    )
    assert (c.model.width, c.data.n_train) == (16, 100)  # the spec's sections under every arm
    assert point.store == "runs/rule=fa,depth=4/seed-5.zarr"
    assert len({p.config_hash for p in spec.points}) == 8


def test_named_arms_on_a_base_preset_with_scales():
    text = """
base = "fc3-fa"
n_seeds = 2
[train]
epochs = 3
[[arms]]
name = "bp"
"rule.name" = "bp"
[[arms]]
name = "fa-lr"
[arms.train]
lr = 0.05
[arms.scale.full]
"train.lr" = 0.02
[scale.full]
"data.n_train" = 400
"""
    quick = parse_spec(text)
    full = parse_spec(text, scale="full")
    by = {(p.arm, p.seed): p.config for p in quick.points}
    assert by[("bp", 1)].rule.name == "bp" and by[("bp", 1)].train.seed == 1
    assert by[("fa-lr", 0)].train.lr == 0.05 and by[("fa-lr", 0)].model.width == 512  # preset
    assert by[("fa-lr", 0)].train.epochs == 3
    full_by = {(p.arm, p.seed): p.config for p in full.points}
    assert full_by[("fa-lr", 0)].train.lr == 0.02  # the arm's own full-scale value
    assert full_by[("bp", 0)].data.n_train == 400 and by[("bp", 0)].data.n_train is None
    again = parse_spec(text, seeds=[7])
    assert [p.seed for p in again.points] == [7, 7]


def test_data_override_moves_only_image_arms():
    text = """
n_seeds = 1
[[arms]]
name = "mlp"
[[arms]]
name = "rnn"
"model.kind" = "rnn"
"model.activation" = "tanh"
"data.name" = "text"
"""
    spec = parse_spec(text, data="mnist")
    names = {p.arm: p.config.data.name for p in spec.points}
    assert names == {"mlp": "mnist", "rnn": "text"}


BAD = {
    "unknown entry": ("n_seeds = 1\nsedes = [1]\n", "unknown entry 'sedes'"),
    "unknown config key": ("n_seeds = 1\n[train]\nlrr = 0.1\n", "lrr"),
    "empty grid": ("n_seeds = 1\n[grid]\n", "[grid] is empty"),
    "empty grid list": ('n_seeds = 1\n[grid]\n"train.lr" = []\n', "empty list"),
    "grid scalar": ('n_seeds = 1\n[grid]\n"train.lr" = 0.1\n', "is not a list"),
    "grid value rejected": (
        'n_seeds = 1\n[grid]\n"rule.name" = ["bp", "fx"]\n',
        "rule.name='fx' is not one of",
    ),
    "grid value bad combination": (
        'n_seeds = 1\n[grid]\n"data.name" = ["digits", "text"]\n',
        "arm 'data=text': text data needs a recurrent model",
    ),
    "duplicate arms": (
        'n_seeds = 1\n[[arms]]\nname = "a"\n[[arms]]\nname = "a"\n',
        "two arms are named 'a'",
    ),
    "no seeds": ("[train]\nepochs = 1\n", "no seeds"),
    "seeds inside a section": ("[train]\nepochs = 1\nn_seeds = 2\n", "before the first [section]"),
    "empty seeds": ("seeds = []\n", "seeds is empty"),
    "negative seed": ("seeds = [-1]\n", "is not a seed"),
    "repeated seed": ("seeds = [1, 1]\n", "repeats a seed"),
    "seed in a section": ("n_seeds = 2\n[train]\nseed = 4\n", "train.seed is set"),
    "grid and arms": (
        'n_seeds = 1\n[grid]\n"train.lr" = [0.1]\n[[arms]]\nname = "a"\n',
        "both [grid] and [[arms]]",
    ),
    "unsafe arm name": ('n_seeds = 1\n[[arms]]\nname = "../x"\n', "directory name"),
    "arm without name": ('n_seeds = 1\n[[arms]]\n"train.lr" = 0.1\n', "has no name"),
    "unknown base": ('base = "fc3-fx"\nn_seeds = 1\n', "unknown preset 'fc3-fx'"),
    "not toml": ("n_seeds = \n", "not valid TOML"),
    "unknown scale": ('n_seeds = 1\n[scale.huge]\n"train.lr" = 0.1\n', "unknown scale 'huge'"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_spec_is_one_clear_error(case):
    text, expected = BAD[case]
    with pytest.raises(SpecError) as err:
        parse_spec(text, where="bad.toml")
    assert expected in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("case", ["unknown config key", "empty grid", "duplicate arms", "no seeds"])
def test_sweep_refuses_a_bad_spec_before_anything_runs(tmp_path, case):
    spec = tmp_path / "bad.toml"
    spec.write_text(BAD[case][0])
    out = tmp_path / "study"
    result = CliRunner().invoke(cli, ["sweep", str(spec), "--out", str(out)])
    assert result.exit_code == 2
    assert BAD[case][1] in result.output
    assert result.output.count("\n") == 1 and result.output.startswith("Error: ")
    assert not out.exists()


def test_missing_spec_file(tmp_path):
    with pytest.raises(SpecError, match="does not exist"):
        load_spec(tmp_path / "none.toml")


FINDING = """
n_seeds = 2
[finding]
number = 1
title = "FA is within 5 points of BP"
claim = "FA's best validation accuracy is within 5 points of BP's"
[[finding.criteria]]
name = "comparable accuracy"
metric = "{metric}"
test = "within"
a = "fa"
b = "{b}"
margin = 0.05
[[arms]]
name = "bp"
"rule.name" = "bp"
[[arms]]
name = "fa"
"rule.name" = "fa"
"""


@pytest.mark.parametrize(
    "metric, b, expected",
    [
        ("best_val_acuracy", "bp", "did you mean 'best_val_accuracy'"),
        ("best_val_accuracy", "pb", "'pb'"),
    ],
)
def test_a_malformed_criterion_stops_the_sweep_before_any_run(tmp_path, metric, b, expected):
    spec = tmp_path / "finding.toml"
    spec.write_text(FINDING.format(metric=metric, b=b))
    out = tmp_path / "study"
    result = CliRunner().invoke(cli, ["sweep", str(spec), "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("Error: finding.toml: criteria[0] (comparable accuracy)")
    assert expected in result.output and result.output.count("\n") == 1
    assert not out.exists()
