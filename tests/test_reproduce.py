"""``dynalign reproduce`` end to end on two tiny findings: runs on a 2-worker LocalCluster,
verdicts from pre-declared criteria, findings.json, and a report that opens with the table."""

from __future__ import annotations

import json
import re

import pytest
from click.testing import CliRunner

import dynalign.analyses.reproduce as reproduce
from dynalign.cli.main import cli

HEAD = """
n_seeds = 2
[model]
depth = 2
width = 32
[data]
n_train = 300
n_val = 100
[train]
epochs = 2
batch_size = 50
lr = 0.1
[[arms]]
name = "bp"
"rule.name" = "bp"
[[arms]]
name = "fa"
"rule.name" = "fa"
"""
LEARNS = """
[finding]
number = 1
title = "BP learns the digits"
claim = "BP's best validation accuracy is far above chance (10%)"
[[finding.criteria]]
name = "above chance"
metric = "best_val_accuracy"
test = "above"
a = "bp"
threshold = 0.3
"""
NEVER = """
[finding]
number = 2
title = "a claim the data refute"
claim = "BP's training accuracy after epoch 1 is below chance"
[[finding.criteria]]
name = "below chance"
metric = "train_accuracy_epoch_1"
test = "below"
a = "bp"
threshold = 0.05
[[finding.criteria]]
name = "angle"
metric = "update_angle_plateau"
test = "greater"
a = "fa"
b = "bp"
"""


@pytest.fixture
def findings(tmp_path, monkeypatch):
    folder = tmp_path / "findings"
    folder.mkdir()
    (folder / "finding-1.toml").write_text(HEAD + LEARNS)
    (folder / "finding-2.toml").write_text(HEAD + NEVER)
    monkeypatch.setattr(reproduce, "_findings_folder", lambda: folder)
    return folder


def test_reproduce_judges_each_finding_and_the_report_opens_with_the_table(findings, tmp_path):
    out = tmp_path / "repro"
    result = CliRunner().invoke(cli, ["reproduce", "--out", str(out), "--workers", "2", "--quiet"])
    assert result.exit_code == 0, result.output
    verdicts = json.loads((out / "findings.json").read_text())
    assert [f["number"] for f in verdicts] == [1, 2]
    first, second = verdicts
    assert first["verdict"] == "reproduced" and first["runs"] == {"completed": 4}
    (above,) = first["criteria"]
    assert above["n"] == 2 and above["low"] > 0.3 and len(above["per_seed"]) == 2
    assert second["verdict"] == "not reproduced"
    below, angle = second["criteria"]
    assert below["verdict"] == "not reproduced" and below["low"] >= 0.05
    assert angle["verdict"] == "reproduced" and angle["low"] > 0  # FA's angle exceeds BP's 0
    assert "1. BP learns the digits  [REPRODUCED]" in result.output
    page = (out / "report.html").read_text()
    table = page.index("class='findings'")
    assert table < page.index('id="study-finding-1"') < page.index('id="study-finding-2"')
    for anchor in re.findall(r"href='#([^']+)'", page):
        assert f'id="{anchor}"' in page
    assert page.count("not reproduced") >= 2

    again = CliRunner().invoke(cli, ["reproduce", "1", "--out", str(out), "--quiet"])
    assert again.exit_code == 0, again.output
    assert "4 already finished, kept" in again.output  # nothing ran again
    assert json.loads((out / "findings.json").read_text())[0]["criteria"] == [above]


def test_one_seed_is_inconclusive(findings, tmp_path):
    out = tmp_path / "repro"
    result = CliRunner().invoke(
        cli, ["reproduce", "1", "--out", str(out), "--seeds", "1", "--workers", "1", "--quiet"]
    )
    assert result.exit_code == 0, result.output
    (finding,) = json.loads((out / "findings.json").read_text())
    assert finding["verdict"] == "inconclusive" and finding["criteria"][0]["n"] == 1


def test_list_and_bad_requests(findings, tmp_path):
    listed = CliRunner().invoke(cli, ["reproduce", "--list"])
    assert listed.exit_code == 0
    assert "1. BP learns the digits" in listed.output and "criterion: below chance" in listed.output
    for args, expected in [
        (["3", "--out", "x"], "no finding '3'; choose from 1, 2"),
        (["1"], "--out is missing"),
        (["1", "--out", "x", "--seeds", "0"], "--seeds 0"),
        (["1", "--out", "x", "--data", "imagenet"], "data.name='imagenet' is not one of"),
    ]:
        result = CliRunner().invoke(cli, ["reproduce", *args])
        assert result.exit_code == 2 and expected in result.output, (args, result.output)
    (findings / "finding-2.toml").write_text((HEAD + NEVER).replace('b = "bp"', 'b = "pb"'))
    out = tmp_path / "never"
    result = CliRunner().invoke(cli, ["reproduce", "--out", str(out)])
    assert result.exit_code == 2
    assert result.output.startswith("Error: finding-2.toml: criteria[1] (angle)")
    assert not out.exists()  # refused before any run, finding 1's included
