"""Step time of dynalign against plain torch, side by side in one process, and peak memory.

A 3x512 ReLU MLP on 3072-dimensional inputs (CIFAR-10 sized), batch 100, SGD with momentum:
  (a) plain torch.nn.Linear, backprop          (the reference: ratio 1.00)
  (b) dynalign, BP, no probes
  (c) dynalign, FA, no probes
  (d) dynalign, FA, every probe on every step, W/B snapshots every 100 steps, store written
      with commits (at least every 10 s) and a checkpoint every 100 steps (one epoch of the
      study's 10,000 images)
  (e) the same with probes every 10 steps
  (r) every other rule (DFA, sign symmetry, Kolen-Pollack, weight mirror, the head-only
      control) without probes: what the rule itself costs (target <= 1.15 each); KP, which
      needs a weight decay, against
  (a, decay) plain torch with the same weight decay
  (w) the weight mirror at 8 and 16 noise samples instead of 32, and mirroring after every
      4th step only (no targets: they show the trade-off: the mirror's two products per layer
      cost 4·samples·P flops for P weights, training's forward and backward passes
      6·batch·P, so 32 samples at batch 100 are 21% of a step's arithmetic; what each costs
      in alignment is ``benchmarks/mirror_table.py``'s)
and for the default ConvNet (3x3 conv 16 and 32 channels, each with ReLU and 2x2 max pool, a
linear read-out) on 3x32x32 images, batch 100, as ratios to its own plain-torch twin:
  (conv a) plain torch.nn.Conv2d/Linear, backprop, images in torch's default layout as a
           plain script passes them (the row the target is set against)
  (conv a, channels-last) the same with the images in channels-last layout, the layout
           dynalign's ConvNet runs in on the CPU: one line in a plain script, and what its
           own feature maps cost there
  (conv c) dynalign FA, no probes
  (conv d) dynalign FA, every probe on every step, store written as in (d)
The conv rows give their ratio to (conv a) and to the channels-last twin: the first is what
using dynalign costs against a plain script as usually written, the second what its rule and
probes cost over the same arithmetic.
Variants are timed in interleaved rounds and each reports its median time per step, so a
machine that is busy for a while slows all of them alike; a recording variant's round ends when
its background writes have, so that none of its work is timed in the next variant's round. A
round is 100 steps, the interval of (d)'s and (e)'s checkpoints and snapshots, so that every
round of theirs holds one of each (in shorter rounds most medians would miss them). The cost
of one checkpoint and of one commit of this net is timed on its own. Peak memory (the peak
resident set of a fresh process, VmHWM on Linux: its ru_maxrss would start at this process's
size, which Linux carries over a fork) is then measured for runs that record 2,000 and 20,000
steps with every probe.

On a CUDA device (``--device cuda``) every variant runs there, each step ends with the loss
read back (as a training loop that prints it does) and each round with a synchronisation, so
the times are wall-clock times of finished work; the memory measurement is the CPU's only.

A GPU runs this net in a few hundred microseconds of arithmetic per step, so there the
step time is mostly the host launching kernels; ``--width`` and ``--batch`` give a net that
keeps a GPU busy (the targets are for the default 512 and 100).

    python benchmarks/step_time.py [--steps 100] [--rounds 11] [--threads 1] [--skip-memory]
                                   [--skip-timing] [--skip-rules] [--skip-conv] [--device cpu]
                                   [--width 512] [--batch 100]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from dynalign.config import build_config
from dynalign.data import Dataset
from dynalign.feedback import feedback_layers
from dynalign.models import build
from dynalign.probes import probe_variables
from dynalign.rules import attach_rule, make_rule
from dynalign.store import RunWriter
from dynalign.trainer import Trainer

N_IN, WIDTH, DEPTH, N_OUT, BATCH = 3072, 512, 3, 10, 100
#: where every variant runs (``--device``)
DEVICE = torch.device("cpu")
IMAGE, CHANNELS = (3, 32, 32), (16, 32)
KP_DECAY = 1e-4  # Kolen-Pollack needs a weight decay; its row is measured against (a, decay)
#: the weight mirror at fewer noise samples than its default 32 (rows without a target)
MIRROR_SAMPLES = (8, 16)
#: ... and mirroring after every k-th step only (32 samples; rows without a target)
MIRROR_EVERY = (4,)


def synthetic(n: int, n_in: int | tuple[int, ...], seed: int = 0) -> Dataset:
    """Random inputs of ``n_in`` features (or of that shape: images) with random labels."""
    shape = (n_in,) if isinstance(n_in, int) else tuple(n_in)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *shape, generator=g)
    y = torch.randint(0, N_OUT, (n,), generator=g)
    return Dataset(
        "bench", x, y, x[:BATCH], y[:BATCH], N_OUT, shape, "classification", "0" * 64, {}
    )


def plain_mlp() -> nn.Module:
    layers: list[nn.Module] = []
    sizes = [N_IN] + [WIDTH] * DEPTH
    for i in range(DEPTH):
        layers += [nn.Linear(sizes[i], sizes[i + 1]), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(WIDTH, N_OUT))


def plain_convnet() -> nn.Module:
    """The default dynalign ConvNet's layers in plain torch."""
    layers: list[nn.Module] = []
    channels, (height, width) = [IMAGE[0], *CHANNELS], IMAGE[1:]
    for c_in, c_out in zip(channels, channels[1:], strict=False):
        layers += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
        height, width = height // 2, width // 2
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(channels[-1] * height * width, N_OUT))


def plain_torch_stepper(
    data: Dataset,
    lr: float = 0.01,
    conv: bool = False,
    weight_decay: float = 0.0,
    channels_last: bool = False,
):
    torch.manual_seed(0)
    model = (plain_convnet() if conv else plain_mlp()).to(DEVICE)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    loss_fn = nn.CrossEntropyLoss()
    layout = torch.channels_last if channels_last else torch.contiguous_format

    def step(x, y):
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x.contiguous(memory_format=layout)), y)
        loss.backward()
        opt.step()
        return loss.item()

    return step


def dynalign_stepper(
    data: Dataset,
    rule: str,
    probe_every: int,
    store: Path | None,
    width: int | None = None,
    conv: bool = False,
    extra: dict | None = None,
):
    model_keys = (
        {"model.kind": "convnet", "model.channels": list(CHANNELS), "data.name": "cifar10"}
        if conv
        else {"model.depth": DEPTH, "model.width": width or WIDTH, "data.name": "synthetic"}
    )
    config = build_config(
        overrides={
            **model_keys,
            "rule.name": rule,
            "probes.every": probe_every,
            "probes.snapshot_every": 100,
            "probes.checkpoint_every": 100,
            # the snapshot schedule ends at the run's last step: long enough for every row
            "train.epochs": 10_000,
            # Kolen-Pollack needs a weight decay for B to converge to W
            "train.weight_decay": KP_DECAY if rule == "kp" else 0.0,
            "train.device": str(DEVICE),
            **(extra or {}),
        }
    )
    torch.manual_seed(0)
    model = build(config, data.input_shape, N_OUT, torch.Generator().manual_seed(1))
    learning_rule = attach_rule(
        model, make_rule(config), torch.Generator().manual_seed(2), data.input_shape
    )
    model.to(DEVICE)
    learning_rule.refresh(feedback_layers(model))  # as a recorded run does after the move
    writer = None
    if store is not None:
        layers = feedback_layers(model)
        writer = RunWriter(
            store,
            {"config": config.to_json()},
            {n: tuple(m.weight.shape) for n, m in layers.items()},
            {n: tuple(m.feedback.shape) for n, m in layers.items() if m.feedback is not None},
            (),
            probe_variables(),
            feedback_fixed=learning_rule.feedback_is_fixed(),
            overwrite=True,
        )
    trainer = Trainer(config, data, model, learning_rule, writer, progress=False)

    def step(x, y):
        loss = trainer.train_batch(x, y)["loss"]
        trainer.keep_safe()
        return loss

    step.trainer = trainer
    if writer is not None:  # a round ends when its background writes have (see time_steps)
        step.settle = writer.wait_for_writes
    return step, writer


#: the plain torch rows each dynalign row is measured against
PLAIN = "(a) torch nn.Linear, BP"
PLAIN_DECAY = f"(a, decay) the same, weight decay {KP_DECAY:g}"
PLAIN_CONV = "(conv a) torch nn.Conv2d, BP"
PLAIN_CONV_LAST = "(conv a, channels-last) the same"


def reference(name: str) -> str:
    """The plain torch row with the same layers and optimiser settings as row ``name``: a
    rule's row measures what the rule costs, not what its required weight decay costs."""
    if "conv" in name:
        return PLAIN_CONV
    return PLAIN_DECAY if name.startswith("(r) dynalign kp") else PLAIN


def time_steps(step, batches, n: int) -> float:
    """Seconds per step over ``n`` steps. A recording variant's time includes waiting for the
    snapshot or checkpoint its background thread is still writing: left running, that work
    would fall into the next variant's round and be charged there."""
    start = time.perf_counter()
    for i in range(n):
        x, y = batches[i % len(batches)]
        step(x, y)
    if hasattr(step, "settle"):
        step.settle()
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)
    return (time.perf_counter() - start) / n


def batches_of(data: Dataset) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [
        (data.x_train[i : i + BATCH].to(DEVICE), data.y_train[i : i + BATCH].to(DEVICE))
        for i in range(0, len(data.x_train), BATCH)
    ]


def timing(steps: int, rounds: int, rules: bool = True, conv: bool = True) -> None:
    """Every variant timed (see the module's docstring); the stores the recording variants
    write (some 300 MB) go with their temporary folder."""
    with tempfile.TemporaryDirectory(prefix="dynalign-bench-", ignore_cleanup_errors=True) as tmp:
        time_variants(steps, rounds, rules, conv, Path(tmp))


def time_variants(steps: int, rounds: int, rules: bool, conv: bool, tmp: Path) -> None:
    data = synthetic(BATCH * 10, N_IN)
    batches = batches_of(data)
    variants = {PLAIN: plain_torch_stepper(data)}
    variants["(b) dynalign BP, no probes"] = dynalign_stepper(data, "bp", 0, None)[0]
    variants["(c) dynalign FA, no probes"] = dynalign_stepper(data, "fa", 0, None)[0]
    variants["(d) FA, all probes every step + store"] = dynalign_stepper(
        data, "fa", 1, tmp / "d.zarr"
    )[0]
    variants["(e) FA, probes every 10 steps + store"] = dynalign_stepper(
        data, "fa", 10, tmp / "e.zarr"
    )[0]
    if rules:
        from dynalign.registry import RULES

        variants[PLAIN_DECAY] = plain_torch_stepper(data, weight_decay=KP_DECAY)
        for name in RULES.names():
            if name not in ("bp", "fa"):
                variants[f"(r) dynalign {name}, no probes"] = dynalign_stepper(data, name, 0, None)[
                    0
                ]
        for samples in MIRROR_SAMPLES:  # the weight mirror's cost is its noise samples'
            variants[f"(w) wm with {samples} noise samples"] = dynalign_stepper(
                data, "wm", 0, None, extra={"rule.mirror_samples": samples}
            )[0]
        for every in MIRROR_EVERY:  # ... and how often it mirrors
            variants[f"(w) wm mirroring after every {every}th step"] = dynalign_stepper(
                data, "wm", 0, None, extra={"rule.mirror_every": every}
            )[0]
    inputs = {name: batches for name in variants}
    if conv:
        images = synthetic(BATCH * 10, IMAGE)
        variants[PLAIN_CONV] = plain_torch_stepper(images, conv=True)
        variants[PLAIN_CONV_LAST] = plain_torch_stepper(images, conv=True, channels_last=True)
        variants["(conv c) FA, no probes"] = dynalign_stepper(images, "fa", 0, None, conv=True)[0]
        variants["(conv d) FA, all probes every step + store"] = dynalign_stepper(
            images, "fa", 1, tmp / "conv-d.zarr", conv=True
        )[0]
        inputs.update(dict.fromkeys(list(variants)[-4:], batches_of(images)))
    for name, step in variants.items():  # warm-up: first calls allocate and pick kernels
        time_steps(step, inputs[name], 5)
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, step in variants.items():
            samples[name].append(time_steps(step, inputs[name], steps))
    where = torch.cuda.get_device_name(DEVICE) if DEVICE.type == "cuda" else "CPU"
    print(
        f"step time on {where}, 3x{WIDTH} ReLU MLP, {N_IN}-d inputs, batch {BATCH}, "
        f"{torch.get_num_threads()} thread(s), {rounds} interleaved rounds x {steps} steps; "
        "ratios to the plain torch row with the same layers and optimiser settings ((a), "
        "(a, decay) or (conv a)), from the medians and from the fastest rounds (least "
        "disturbed by others)"
    )
    for name, values in samples.items():
        ref = samples[reference(name)]
        med, best = statistics.median(values), min(values)
        ratio = med / statistics.median(ref)
        goal = target(name, torch.get_num_threads()) if (WIDTH, BATCH) == (512, 100) else None
        verdict = (
            ""
            if goal is None
            else f"   target <= {goal:.2f}: " + ("met" if ratio <= goal else "NOT met")
        )
        same_layout = ""
        if name.startswith("(conv") and name != PLAIN_CONV:
            last = med / statistics.median(samples[PLAIN_CONV_LAST])
            same_layout = f"   to channels-last twin {last:5.2f}"
        print(
            f"  {name:<42} {med * 1e3:8.2f} ms/step   ratio {ratio:5.2f}"
            f"   fastest {best * 1e3:8.2f} ms   ratio {best / min(ref):5.2f}{verdict}"
            f"{same_layout}"
        )
    trainer = variants["(d) FA, all probes every step + store"].trainer
    writer = trainer.writer
    costs = {
        "checkpoint (weights, B, momentum, generators)": lambda: trainer.checkpoint(False),
        "checkpoint's writing and commit (background)": writer.finish_checkpoint,
        "commit of 10 new steps (rows flushed, fsync'd)": writer.commit,
    }
    times: dict[str, list[float]] = {name: [] for name in costs}
    for _ in range(rounds):
        for name, action in costs.items():
            if "background" not in name:
                for x, y in batches:  # ten steps first, so that there is something to write
                    trainer.train_batch(x, y)
            start = time.perf_counter()
            action()
            times[name].append(time.perf_counter() - start)
    for name, values in times.items():
        med = statistics.median(values)
        print(f"  one {name:<46} {med * 1e3:8.2f} ms  (median of {rounds})")
    for step in variants.values():  # the stores are removed next: their writes end first
        if hasattr(step, "settle"):
            step.settle()


MEMORY_CHILD = """
import resource, sys, torch
sys.path.insert(0, {here!r})
from step_time import dynalign_stepper, synthetic
torch.set_num_threads(1)
n_steps, store = int(sys.argv[1]), sys.argv[2]
data = synthetic(1000, 64)
step, writer = dynalign_stepper(data, "fa", 1, __import__("pathlib").Path(store), width=64)
for i in range(n_steps):
    j = (i % 10) * 100
    step(data.x_train[j:j + 100], data.y_train[j:j + 100])
writer.close("completed")
try:  # this process image's own peak: Linux carries ru_maxrss over from the parent's fork
    status = open("/proc/self/status").read()
    print(int(status.split("VmHWM:")[1].split()[0]))
except (OSError, IndexError):
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def memory(counts=(2000, 20000)) -> None:
    here = str(Path(__file__).resolve().parent)
    code = MEMORY_CHILD.format(here=here)
    print(
        "peak memory (peak resident set of a fresh process), FA 3x64 MLP on 64-d inputs "
        "(small, so that 20,000 steps take a minute or two), every probe every step, "
        "snapshots every 100 steps"
    )
    peaks = {}
    for n in counts:
        start = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="dynalign-mem-") as tmp:
            out = subprocess.run(
                [sys.executable, "-c", code, str(n), str(Path(tmp) / f"m{n}.zarr")],
                capture_output=True,
                text=True,
                check=True,
            )
        peaks[n] = int(out.stdout.strip().splitlines()[-1]) / 1024  # KiB -> MiB on Linux
        print(f"  {n:>6} steps: {peaks[n]:8.1f} MiB   ({time.perf_counter() - start:.0f} s)")
    a, b = counts
    print(f"  difference {b} - {a} steps: {peaks[b] - peaks[a]:+.1f} MiB")


#: targets, as ratios to plain torch in the same run: by the variant's label, (d) by threads
TARGETS = {"(c)": 1.05, "(e)": 1.10, "(conv d)": 1.5, "(r)": 1.15}
TARGET_D = {1: 1.4, 2: 1.6}


def target(name: str, threads: int) -> float | None:
    """The ratio ``name`` should stay within, or None for the references."""
    if name.startswith("(d)"):
        return TARGET_D.get(threads, TARGET_D[2])
    return next((t for label, t in TARGETS.items() if name.startswith(label)), None)


def main() -> None:
    global DEVICE, WIDTH, BATCH
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # rounds as long as the checkpoint and snapshot interval (100 steps), so that each round
    # of (d) and (e) holds one of each and the medians carry their cost
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--skip-timing", action="store_true")
    parser.add_argument("--skip-rules", action="store_true", help="leave out the (r) rows")
    parser.add_argument("--skip-conv", action="store_true", help="leave out the ConvNet rows")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument(
        "--width", type=int, default=WIDTH, help="the MLP's hidden units (targets: at 512)"
    )
    parser.add_argument("--batch", type=int, default=BATCH, help="samples per step")
    args = parser.parse_args()
    DEVICE, WIDTH, BATCH = torch.device(args.device), args.width, args.batch
    if DEVICE.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: no CUDA device is available here; use cpu")
    torch.set_num_threads(args.threads)
    if not args.skip_timing:
        timing(args.steps, args.rounds, not args.skip_rules, not args.skip_conv)
    if not args.skip_memory:
        memory()  # a CPU measurement: its child processes record on the CPU


if __name__ == "__main__":
    main()
