"""The weight mirror's cost against how well B follows W: fewer noise samples, or mirroring
after every k-th step only, side by side with the default, over seeds.

Each arm is the ``fc3-wm`` preset (3x512 ReLU MLP on the 8x8 digits, 30 epochs) with one
change. The mirror's work per step is (mirror_samples / 32) / mirror_every of the default's;
what that saves in step time is ``benchmarks/step_time.py``'s (w) rows. At the same
``mirror_lr`` a mirror after every k-th step follows W k times more slowly; k times the rate
keeps its pace with the noise of mirror_samples / k samples. The table (Markdown) gives the
best validation accuracy and the final update angle of each hidden layer (mean over the last
tenth of the probed steps), mean [95% bootstrap CI] over seeds. The study stays in ``--out``:
the same command again reuses its finished runs, and ``dynalign report DIR`` draws its curves.

    python benchmarks/mirror_table.py --out runs/mirror-digits [--seeds 3] [--workers 2]
"""

from __future__ import annotations

import argparse

from rules_table import table

from dynalign.spec import parse_spec
from dynalign.sweep import run_study

#: arm name -> the rule keys it changes (the first is the preset as it is)
ARMS = {
    "32-samples-every-step": {},
    "16-samples": {"mirror_samples": 16},
    "8-samples": {"mirror_samples": 8},
    "4-samples": {"mirror_samples": 4},
    "every-2nd-step": {"mirror_every": 2},
    "every-4th-step": {"mirror_every": 4},
    "every-4th-step-4x-rate": {"mirror_every": 4, "mirror_lr": 0.04},
    "every-8th-step-8x-rate": {"mirror_every": 8, "mirror_lr": 0.08},
}


def spec_text(seeds: int) -> str:
    lines = ['base = "fc3-wm"', f"n_seeds = {seeds}", ""]
    for name, keys in ARMS.items():
        lines += ["[[arms]]", f'name = "{name}"']
        lines += [f'"rule.{key}" = {value!r}' for key, value in keys.items()]
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", required=True, help="the study's directory")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    spec = parse_spec(spec_text(args.seeds), name="mirror-digits")
    run_study(spec, args.out, workers=args.workers)
    print(table(args.out, label="weight mirror"))


if __name__ == "__main__":
    main()
