"""Every learning rule side by side: best validation accuracy and the final update angle of each
hidden layer, over seeds, as mean [95% bootstrap CI].

One study (a 3x512 ReLU MLP, SGD with momentum, the same settings for every rule) runs as a
sweep, then the table is printed in Markdown. The study stays in ``--out``: running the same
command again reuses its finished runs, and ``dynalign report DIR`` draws its curves.

    python benchmarks/rules_table.py --data digits --out runs/rules-digits
    python benchmarks/rules_table.py --data fashion-mnist --out runs/rules-fmnist   # 10k / 1k
    python benchmarks/rules_table.py --rules brsf kp --out runs/rules-some          # a subset
"""

from __future__ import annotations

import argparse

import numpy as np

from dynalign.analyses.smoothing import bootstrap_ci
from dynalign.registry import RULES
from dynalign.spec import parse_spec
from dynalign.study_reader import open_study
from dynalign.sweep import run_study

#: per data set: sections the spec sets on top of the fc3-bp preset
SETTINGS = {
    "digits": {"train": {"epochs": 30}},
    "fashion-mnist": {
        "data": {"name": "fashion-mnist", "n_train": 10000, "n_val": 1000},
        "train": {"epochs": 60},
    },
}
#: Kolen-Pollack needs a weight decay for B to converge to W; every rule trains with it, so
#: that the comparison stays fair
WEIGHT_DECAY = 1e-3
#: the final angle: the mean over this last fraction of the probed steps
LAST = 0.1


def spec_text(data: str, seeds: int, rules: list[str]) -> str:
    lines = ['base = "fc3-bp"', f"n_seeds = {seeds}", ""]
    sections = {
        **SETTINGS[data],
        "probes": {"every": 10, "snapshot_every": 100000},
    }
    sections["train"] = {**sections.get("train", {}), "weight_decay": WEIGHT_DECAY}
    for section, values in sections.items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {v!r}".replace("'", '"') for k, v in values.items()]
        lines.append("")
    for rule in rules:
        lines += ["[[arms]]", f'name = "{rule}"', f'"rule.name" = "{rule}"', ""]
    return "\n".join(lines)


def cell(values: np.ndarray, scale: float = 1.0, digits: int = 1) -> str:
    values = np.asarray(values, dtype=float)
    if not np.isfinite(values).any():
        return "-"
    low, high = bootstrap_ci(values)
    mean = np.nanmean(values)
    if not np.isfinite(low):
        return f"{mean * scale:.{digits}f}"
    return f"{mean * scale:.{digits}f} [{low * scale:.{digits}f}, {high * scale:.{digits}f}]"


def table(out: str, label: str = "rule") -> str:
    """The study's arms (``label`` heads their column) as rows of a Markdown table."""
    study = open_study(out, dims="arm")
    epochs, steps = study["epochs"].ds, study["steps"].ds
    layers = [str(n) for n in steps.layer.values][:-1]  # hidden layers: all but the read-out
    head = [label, "n", "best val acc %", *[f"{n} angle °" for n in layers]]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for arm in study["epochs"].ds.arm.values:
        best = epochs.val_accuracy.sel(arm=arm).max("epoch").values
        angles = steps.update_angle.sel(arm=arm)
        cells = [str(arm), str(int(np.isfinite(best).sum())), cell(best, 100)]
        for layer in layers:
            finals = []
            for seed in angles.seed.values:
                series = angles.sel(seed=seed, layer=layer).dropna("step").values
                k = max(1, int(len(series) * LAST))
                finals.append(np.nanmean(series[-k:]) if len(series) else np.nan)
            cells.append(cell(np.array(finals)))
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", choices=list(SETTINGS), default="digits")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", required=True, help="the study's directory")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--rules", nargs="+", choices=RULES.names(), default=RULES.names(), help="default: all"
    )
    args = parser.parse_args()
    spec = parse_spec(spec_text(args.data, args.seeds, args.rules), name=f"rules-{args.data}")
    run_study(spec, args.out, workers=args.workers)
    print(table(args.out))


if __name__ == "__main__":
    main()
