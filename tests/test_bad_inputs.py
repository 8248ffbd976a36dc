"""Every malformed input ends with one `Error: ...` line naming the problem and its fix, exit
code 2, no traceback, and nothing written: one regression table through the real CLI.

Each case fails in validation, before any training, so the table runs in seconds.
"""

from __future__ import annotations

import gzip
import json
import shutil
import struct
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from click.testing import CliRunner
from synthetic_stores import make_run, write_run

from dynalign.analyses import report as report_module
from dynalign.cli.main import cli

#: appended to every `record` case: small, so that a case that slipped through would be quick
SMALL = ["--set", "train.epochs=1", "--set", "data.n_train=100", "--set", "model.width=16"]
#: SMALL for a convnet, which has channels, not a width (a model refuses keys it does not read)
SMALL_CONVNET = [*SMALL[:-1], "model.channels=4,8"]
TINY_RUN = [*SMALL, "--set", "data.n_val=50", "--quiet"]


@dataclass
class Case:
    """``args`` with ``{tmp}`` (the case's empty folder) and ``{store}`` / ``{killed}`` /
    ``{damaged}`` (stores recorded once per module); ``setup`` puts files into ``{tmp}``."""

    id: str
    args: list[str]
    problem: str  # fragment naming what is wrong
    fix: str  # fragment of the fix hint
    setup: object = None
    raw: bool = False  # a `record` case that names its own --out (or --resume): args as given
    record: bool = field(init=False)

    def __post_init__(self):
        self.record = self.args[0] == "record" and not self.raw


def _toml(text: str | bytes):
    def make(tmp: Path) -> None:
        data = text.encode() if isinstance(text, str) else text
        (tmp / "c.toml").write_bytes(data)

    return make


def _dirs(*names: str):
    def make(tmp: Path) -> None:
        for name in names:
            (tmp / name).mkdir(parents=True)

    return make


def _file(name: str, data: bytes = b"x"):
    def make(tmp: Path) -> None:
        (tmp / name).write_bytes(data)

    return make


def _foreign_zarr(tmp: Path) -> None:
    import zarr

    zarr.open_group(str(tmp / "other.zarr"), mode="w", zarr_format=3).attrs["owner"] = "someone"


def _without_committed(tmp: Path) -> None:
    """A copy of the tiny store (see ``stores``) whose committed lengths are gone."""
    shutil.copytree(STORE_FOR_SETUP[0], tmp / "nocommit.zarr")
    meta = json.loads((tmp / "nocommit.zarr" / "zarr.json").read_text())
    del meta["attributes"]["committed"]
    (tmp / "nocommit.zarr" / "zarr.json").write_text(json.dumps(meta))


#: the tiny recorded store's path, for setups that copy it (filled by the ``stores`` fixture)
STORE_FOR_SETUP: list[str] = []


def _idx(n_images: int = 20, n_labels: int = 20, truncate: int = 0, swap: bool = False):
    """MNIST-style IDX files in ``{tmp}/idx``: the right sizes unless asked otherwise."""

    def make(tmp: Path) -> None:
        folder = tmp / "idx"
        folder.mkdir()
        images = struct.pack(">IIII", 0x803, n_images, 28, 28) + bytes(n_images * 784)
        labels = struct.pack(">II", 0x801, n_labels) + bytes(n_labels)
        if swap:
            images, labels = labels, images
        (folder / "train-images-idx3-ubyte").write_bytes(images[: len(images) - truncate])
        (folder / "train-labels-idx1-ubyte").write_bytes(labels)

    return make


def _bad_gzip(tmp: Path) -> None:
    folder = tmp / "idx"
    folder.mkdir()
    blob = gzip.compress(struct.pack(">IIII", 0x803, 2, 28, 28) + bytes(2 * 784))
    (folder / "train-images-idx3-ubyte.gz").write_bytes(blob[:30])
    (folder / "train-labels-idx1-ubyte").write_bytes(struct.pack(">II", 0x801, 2) + bytes(2))


def _s(*pairs: str) -> list[str]:
    """``--set`` options for each ``key=value``."""
    return [arg for pair in pairs for arg in ("--set", pair)]


R = ["record"]
CONVNET = ["--model", "convnet"]
TEXT = ["--model", "rnn", "--dataset", "text"]
MNIST = ["--dataset", "mnist", "--data-dir", "{tmp}/idx"]

CASES = [
    # -- non-finite floats, for every kind of float key
    Case("lr-nan", [*R, *_s("train.lr=nan")], "train.lr='nan' is not a finite", "give a finite"),
    Case("lr-inf", [*R, "--lr", "inf"], "train.lr='inf' is not a finite", "give a finite"),
    Case("lr-neg-inf", [*R, *_s("lr=-inf")], "not a finite number", "give a finite"),
    Case("momentum-nan", [*R, *_s("train.momentum=nan")], "train.momentum='nan'", "e.g."),
    Case("bn-momentum-nan", [*R, *_s("model.bn_momentum=NaN")], "not a finite", "give"),
    Case("scale-inf", [*R, *_s("rule.scale=Infinity")], "rule.scale", "give a finite"),
    Case("grad-clip-nan", [*R, *_s("train.grad_clip=nan")], "train.grad_clip", "give"),
    Case("decay-overflow", [*R, *_s("train.weight_decay=1e400")], "not a finite", "give"),
    # -- seeds
    Case("seed-huge", [*R, "--seed", "1" + "0" * 23], "train.seed=1000", "give a seed from 0"),
    Case("seed-2**32", [*R, "--seed", str(2**32)], "is too large", "give a seed"),
    Case("seed-negative", [*R, "--seed", "-1"], "must not be negative", "give 0 or more"),
    Case("seed-text", [*R, "--seed", "abc"], "train.seed='abc' is not a valid int", "give"),
    Case("seed-fraction", [*R, "--seed", "1.5"], "is not a valid int", "e.g. train.seed=0"),
    # -- other values out of range or of the wrong type
    Case("lr-zero", [*R, "--lr", "0"], "train.lr=0.0 must be greater than 0", "give a positive"),
    Case("lr-empty", [*R, *_s("train.lr=")], "train.lr='' is not a valid float", "give"),
    Case("epochs-zero", [*R, "--epochs", "0"], "train.epochs=0", "give a positive"),
    Case("epochs-negative", [*R, *_s("epochs=-3")], "must be greater than 0", "give"),
    Case("batch-text", [*R, "--batch-size", "abc"], "train.batch_size='abc'", "give"),
    # the typed flags (INTEGER, FLOAT in `record --help`) keep the config's messages
    Case("epochs-text", [*R, "--epochs", "many"], "train.epochs='many' is not a valid int", "give"),
    Case("threads-fraction", [*R, "--threads", "1.5"], "not a valid int", "e.g. train.threads=1"),
    Case("threads-zero", [*R, "--threads", "0"], "train.threads=0 must be greater", "give"),
    Case("width-negative", [*R, "--width", "-4"], "model.width=-4 must be greater", "give"),
    Case("width-zero", [*R, *_s("model.width=0")], "model.width=0", "give a positive"),
    Case("depth-fraction", [*R, "--depth", "2.5"], "model.depth='2.5' is not a valid", "give"),
    Case("kind-unknown", [*R, "--model", "transformer"], "'transformer' is not one of", "set"),
    Case("rule-unknown", [*R, "--rule", "sgd"], "rule.name='sgd' is not one of", "set rule"),
    Case("dataset-unknown", [*R, "--dataset", "imagenet"], "data.name='imagenet'", "set data"),
    Case("scaling-unknown", [*R, *_s("data.scaling=minmax")], "data.scaling='minmax'", "set"),
    Case("optimizer-typo", [*R, *_s("optimizer=adamw")], "did you mean 'adam'", "set"),
    Case("fraction-above-1", [*R, *_s("constraint.excitatory_fraction=1.5")], "between 0", "give"),
    Case("channels-empty", [*R, *CONVNET, *_s("model.channels=[]")], "channel counts", "set"),
    Case("channels-negative", [*R, *CONVNET, *_s("channels=[16,-2]")], "positive channel", "set"),
    Case("channels-text", [*R, *_s("model.channels=a,b")], "not a valid list", "give"),
    Case("bool-text", [*R, *_s("constraint.balance=maybe")], "not a valid bool", "give"),
    Case("device-unknown", [*R, "--device", "tpu"], "'tpu' is not a device", "use cpu"),
    Case("device-empty", [*R, "--device", ""], "train.device is an empty string", "give"),
    Case("one-class", [*R, "--dataset", "synthetic", *_s("n_classes=1")], "too small", "give 2"),
    Case("key-typo", [*R, *_s("train.lrr=0.1")], "did you mean 'train.lr'", "use section.key"),
    Case("set-no-equals", [*R, "--set", "train.lr"], "must look like section.key=value", "e.g."),
    Case("threads-absurd", [*R, *_s("train.threads=100000")], "CPU cores", "lower train.threads"),
    Case("probes-negative", [*R, *_s("probes.every=-1")], "probes.every=-1", "give 0 or more"),
    Case("probe-inputs-zero", [*R, *_s("n_probe_inputs=0")], "must be greater than 0", "give"),
    Case("mirror-every-zero", [*R, *_s("rule.mirror_every=0")], "mirror_every=0", "give"),
    Case("mirror-every-fraction", [*R, *_s("mirror_every=2.5")], "not a valid int", "e.g."),
    Case("snapshot-text", [*R, *_s("snapshot_every=often")], "not a valid int", "give"),
    # -- sizes that cannot fit in memory, refused before allocating
    Case("width-absurd", [*R, *_s("model.width=100000000")], "GiB", "lower model.width"),
    Case("depth-absurd", [*R, *_s("model.depth=10000000")], "needs about", "lower model.width"),
    Case(
        "channels-absurd",
        [*R, *CONVNET, *_s("model.channels=[100000,100000]")],
        "needs about",
        "lower model.channels",
    ),
    Case(
        "synthetic-absurd",
        [*R, "--dataset", "synthetic", *_s("data.n_inputs=1000000000")],
        "synthetic data of",
        "lower data.n_train",
    ),
    # -- combinations that cannot run
    Case(
        "convnet-synthetic",
        [*R, *CONVNET, "--dataset", "synthetic"],
        "a convnet needs image data",
        "set data.name",
    ),
    Case("kernel-too-big", [*R, *CONVNET, *_s("kernel_size=100")], "8x8", "set model.kernel_size"),
    Case("convnet-too-deep", [*R, *CONVNET, *_s("channels=[2,2,2,2,2]")], "below 1x1", "use fewer"),
    Case("rnn-synthetic", [*R, "--model", "rnn", "--dataset", "synthetic"], "an rnn", "set data"),
    Case("rnn-mixed-relu", [*R, *TEXT, *_s("activation=mixed_relu")], "rnn models", "use one of"),
    Case("mlp-patches", [*R, "--dataset", "patches"], "no labels", "set model.kind=autoencoder"),
    Case("mlp-text", [*R, "--dataset", "text"], "needs a recurrent model", "set model.kind=rnn"),
    Case(
        "autoencoder-bn",
        [*R, "--model", "autoencoder", *_s("batch_norm=standard")],
        "the autoencoder model does not read it",
        "remove model.batch_norm (now standard), or set model.batch_norm=none",
    ),
    Case(
        "autoencoder-activation",
        [*R, "--model", "autoencoder", "--dataset", "patches", *_s("activation=sigmoid")],
        "the autoencoder model does not read it",
        "remove model.activation (now sigmoid), or set model.activation=relu",
    ),
    Case("convnet-width", [*R, *CONVNET, "--width", "16"], "does not read it", "model.width=512"),
    Case(
        "rnn-depth-and-bn",
        [*R, *TEXT, "--depth", "2", *_s("batch_norm=standard")],
        "the rnn model does not read them",
        "remove model.depth (now 2) and model.batch_norm (now standard)",
    ),
    Case(
        "bn-last-batch-of-one",
        [*R, *_s("batch_norm=standard", "data.n_train=101", "batch_size=50")],
        "last minibatch",
        "change train.batch_size",
    ),
    Case("bn-batch-of-one", [*R, *_s("batch_norm=noaffine", "batch_size=1")], "2 or more", "set"),
    Case(
        "balance-no-inhibition",
        [*R, *_s("sign=synapse", "balance=true", "constraint.excitatory_fraction=1")],
        "balance needs both",
        "set constraint.balance=false",
    ),
    Case("digits-data-dir", [*R, "--data-dir", "{tmp}"], "digits is embedded", "leave it out"),
    Case(
        "synthetic-data-dir",
        [*R, "--dataset", "synthetic", "--data-dir", "{tmp}"],
        "synthetic is embedded",
        "leave it out",
    ),
    Case("text-data-dir", [*R, *TEXT, "--data-dir", "{tmp}"], "needs no --data-dir", "set"),
    Case("text-path-digits", [*R, *_s("text_path=/etc/hostname")], "only read for", "leave"),
    Case("synthetic-unit", [*R, "--dataset", "synthetic", *_s("scaling=unit")], "maximum", "use"),
    Case("n-train-too-many", [*R, *_s("data.n_train=5000")], "1797 samples", "lower data.n_train"),
    Case("n-val-too-many", [*R, *_s("data.n_val=1790")], "1797 samples", "lower data.n_train"),
    # -- presets
    Case("preset-unknown", [*R, "--preset", "nope"], "unknown preset 'nope'", "dynalign presets"),
    Case("preset-typo", [*R, "--preset", "fc3-faa"], "did you mean 'fc3-fa'", "lists them"),
    Case("preset-empty", [*R, "--preset", ""], "unknown preset ''", "dynalign presets"),
    # -- config files
    Case("config-missing", [*R, "--config", "{tmp}/none.toml"], "does not exist", "pass a .toml"),
    Case("config-device", [*R, "--config", "/dev/null"], "not a regular file", "pass a .toml"),
    Case(
        "config-binary",
        [*R, "--config", "{tmp}/c.toml"],
        "is not UTF-8 text",
        "pass a TOML text file",
        _toml(Path("/bin/ls").read_bytes()[:4096] if Path("/bin/ls").exists() else b"\x7fELF\xff"),
    ),
    Case(
        "config-bad-utf8",
        [*R, "--config", "{tmp}/c.toml"],
        "byte 0xff",
        "pass a TOML",
        _toml(b"[model]\ndepth = 2 # \xff\xfe\n"),
    ),
    Case(
        "config-huge",
        [*R, "--config", "{tmp}/c.toml"],
        "too large for a config",
        "pass a .toml",
        _toml("# filler\n" * 200_000),
    ),
    Case("config-syntax", [*R, "--config", "{tmp}/c.toml"], "not valid TOML", "fix", _toml("[m")),
    Case(
        "config-scalar-section",
        [*R, "--config", "{tmp}/c.toml"],
        "model = 3 is not a section",
        "write [model]",
        _toml("model = 3\n"),
    ),
    Case(
        "config-unknown-section",
        [*R, "--config", "{tmp}/c.toml"],
        "unknown section [trian]; did you mean 'train'",
        "use sections",
        _toml("[trian]\nlr = 0.1\n"),
    ),
    Case(
        "config-nested-table",
        [*R, "--config", "{tmp}/c.toml"],
        "unknown config key 'model.sub.x'",
        "use section.key",
        _toml("[model.sub]\nx = 1\n"),
    ),
    Case(
        "config-list-of-text",
        [*R, "--config", "{tmp}/c.toml"],
        "model.channels=['a'] is not a valid list",
        "give",
        _toml('[model]\nchannels = ["a"]\n'),
    ),
    Case(
        "config-list-of-floats",
        [*R, "--config", "{tmp}/c.toml"],
        "model.channels=[16.5] is not a valid list",
        "give",
        _toml("[model]\nkind = 'convnet'\nchannels = [16.5]\n"),
    ),
    Case(
        "config-number-for-text",
        [*R, "--config", "{tmp}/c.toml"],
        "model.kind=3 is not a valid str",
        "give",
        _toml("[model]\nkind = 3\n"),
    ),
    Case(
        "config-number-for-bool",
        [*R, "--config", "{tmp}/c.toml"],
        "constraint.balance=2 is not a valid bool",
        "give",
        _toml("[constraint]\nbalance = 2\n"),
    ),
    Case(
        "config-toml-nan",
        [*R, "--config", "{tmp}/c.toml"],
        "train.lr=nan is not a finite number",
        "give a finite",
        _toml("[train]\nlr = nan\n"),
    ),
    Case(
        "config-fraction-for-int",
        [*R, "--config", "{tmp}/c.toml"],
        "model.depth=2.5 is not a valid int",
        "give",
        _toml("[model]\ndepth = 2.5\n"),
    ),
    # -- data directories and files
    Case(
        "cifar-missing-dir",
        [*R, "--dataset", "cifar10", "--data-dir", "{tmp}/nowhere/deeper"],
        "nowhere/deeper (--data-dir) does not exist",
        "create it",
    ),
    Case(
        "cifar-dir-is-file",
        [*R, "--dataset", "cifar10", "--data-dir", "{tmp}/f.txt"],
        "is a file, not a directory",
        "pass --data-dir",
        _file("f.txt"),
    ),
    Case(
        "cifar-tarball-is-dir",
        [*R, "--dataset", "cifar10", "--data-dir", "{tmp}/d"],
        "cifar-10-python.tar.gz is a directory",
        "put the cifar-10-python.tar.gz file",
        _dirs("d/cifar-10-python.tar.gz"),
    ),
    Case("mnist-missing-dir", [*R, *MNIST], "idx does not exist", "pass --data-dir"),
    Case("mnist-dir-is-file", [*R, *MNIST], "is a file, not a directory", "pass", _file("idx")),
    Case("mnist-empty-dir", [*R, *MNIST], "not found", "pass --data-dir", _dirs("idx")),
    Case("idx-truncated", [*R, *MNIST], "truncated", "fetch it again", _idx(truncate=100)),
    Case("idx-wrong-magic", [*R, *MNIST], "magic number", "check", _idx(swap=True)),
    Case("idx-count-mismatch", [*R, *MNIST], "20 images but", "use an images", _idx(20, 19)),
    Case("idx-bad-gzip", [*R, *MNIST], "damaged gzip", "fetch it again", _bad_gzip),
    Case("idx-too-few", [*R, *MNIST, *_s("n_val=10")], "has 20 samples", "lower", _idx()),
    Case(
        "fashion-dir-is-file",
        [*R, "--dataset", "fashion-mnist", "--data-dir", "{tmp}/f"],
        "is a file, not a directory",
        "pass --data-dir",
        _file("f"),
    ),
    Case("text-path-dir", [*R, *TEXT, *_s("text_path={tmp}")], "is a directory", "set data"),
    Case("text-path-device", [*R, *TEXT, *_s("text_path=/dev/zero")], "not a regular", "set"),
    Case("text-path-missing", [*R, *TEXT, *_s("text_path={tmp}/no.txt")], "does not exist", "set"),
    Case(
        "text-binary",
        [*R, *TEXT, *_s("text_path={tmp}/t.bin")],
        "holds NUL bytes",
        "set data.text_path",
        _file("t.bin", b"abc\0def" * 100),
    ),
    Case(
        "text-not-utf8",
        [*R, *TEXT, *_s("text_path={tmp}/t.txt")],
        "is not UTF-8",
        "convert it to UTF-8",
        _file("t.txt", "café".encode("latin-1") * 10),
    ),
    Case(
        "text-empty",
        [*R, *TEXT, *_s("text_path={tmp}/t.txt")],
        "is empty",
        "set data.text_path",
        _file("t.txt", b""),
    ),
    Case(
        "text-too-short",
        [*R, *TEXT, *_s("text_path={tmp}/t.txt", "n_val=5")],
        "windows of data.seq_len+1",
        "lower data.n_train",
        _file("t.txt", b"hello world " * 10),
    ),
    # -- analysis parameters and paths
    Case(
        "param-text-for-number",
        ["analyze", "{store}", "--set-param", "alignment.threshold=abc"],
        "alignment.threshold='abc' is not a number",
        "give e.g. --set-param alignment.threshold=80.0",
    ),
    Case(
        "param-list-for-number",
        ["analyze", "{store}", "--set-param", "alignment.threshold=[1,2]"],
        "is not a number",
        "give e.g.",
    ),
    Case(
        "param-nan",
        ["analyze", "{store}", "--set-param", "alignment.threshold=NaN"],
        "not a finite number",
        "give e.g.",
    ),
    Case(
        "param-fraction-for-int",
        ["analyze", "{store}", "--set-param", "alignment.window=2.5"],
        "is not a whole number",
        "give e.g. --set-param alignment.window=5",
    ),
    Case(
        "param-bool-for-int",
        ["analyze", "{store}", "--set-param", "alignment.window=true"],
        "is not a number",
        "give e.g.",
    ),
    Case(
        "param-out-of-range",
        ["analyze", "{store}", "--set-param", "alignment.threshold=500"],
        "must be an angle in (0, 180]",
        "e.g. 80",
    ),
    Case(
        "param-window-zero",
        ["analyze", "{store}", "--set-param", "alignment.window=0"],
        "window=0 must be a whole number >= 1",
        "e.g. window=5",
    ),
    Case(
        "param-unknown-curve",
        ["analyze", "{store}", "--set-param", "unlearning.curve=test"],
        "curve='test' must be one of batch, val",
        "choose one of them",
    ),
    Case(
        "param-compare-text",
        ["analyze", "{store}", "--set-param", "compare.n_boot=many"],
        "compare.n_boot='many' is not a number",
        "give e.g. --set-param compare.n_boot=2000",
    ),
    Case(
        "param-compare-by-number",
        ["analyze", "{store}", "--set-param", "compare.by=5"],
        "is not a name or a list of names",
        "give e.g.",
    ),
    Case(
        "param-compare-names",
        ["analyze", "{store}", "--set-param", 'compare.names=["a"]'],
        "has no parameter 'names'",
        "choose one of",
    ),
    Case(
        "param-unknown-key",
        ["analyze", "{store}", "--set-param", "alignment.nope=1"],
        "alignment has no parameter 'nope'",
        "choose one of",
    ),
    Case(
        "param-unknown-analysis",
        ["analyze", "{store}", "--set-param", "nope.x=1"],
        "unknown analysis 'nope'",
        "choose from",
    ),
    Case(
        "param-no-dot",
        ["analyze", "{store}", "--set-param", "threshold=1"],
        "must look like NAME.KEY=VALUE",
        "e.g. --set-param",
    ),
    Case("only-unknown", ["analyze", "{store}", "--only", "nope"], "unknown analysis", "choose"),
    Case(
        "analyze-out-is-file",
        ["analyze", "{store}", "--out", "{tmp}/f"],
        "exists and is not a directory",
        "pick a folder",
        _file("f"),
    ),
    Case(
        "analyze-killed-run",
        ["analyze", "{killed}", "--only", "unlearning"],
        "recorded 2 steps and 1 epoch (status running)",
        "analyse it again once it has trained longer",
    ),
    Case("report-not-html", ["report", "{store}", "--out", "{tmp}/r.txt"], ".html", "give --out"),
    Case(
        "report-out-is-dir",
        ["report", "{store}", "--out", "{tmp}/r.html"],
        "r.html is a directory",
        "give --out another",
        _dirs("r.html"),
    ),
    Case(
        "report-parent-is-file",
        ["report", "{store}", "--out", "{tmp}/f/r.html", "--pdf"],
        "is a file, not a folder",
        "choose another --out",
        _file("f"),
    ),
    # stores and output paths: record --out / --resume, inspect, analyze
    Case(
        "out-exists",
        ["record", *SMALL, "--quiet", "--out", "{tmp}/f"],
        "already exists",
        "pass --overwrite",
        _file("f"),
        raw=True,
    ),
    Case(
        "overwrite-a-file",
        ["record", *SMALL, "--quiet", "--overwrite", "--out", "{tmp}/notes.txt"],
        "is not a directory",
        "--overwrite replaces only run stores",
        _file("notes.txt", b"my notes"),
        raw=True,
    ),
    Case(
        "overwrite-a-folder",
        ["record", *SMALL, "--quiet", "--overwrite", "--out", "{tmp}/mine"],
        "is not a dynalign run store",
        "choose another --out",
        lambda tmp: _dirs("mine")(tmp) or _file("mine/data.csv")(tmp),
        raw=True,
    ),
    Case(
        "overwrite-foreign-zarr",
        ["record", *SMALL, "--quiet", "--overwrite", "--out", "{tmp}/other.zarr"],
        "no zarr metadata with schema_version",
        "choose another --out",
        _foreign_zarr,
        raw=True,
    ),
    Case(
        "resume-missing",
        ["record", "--resume", "{tmp}/none.zarr"],
        "does not exist",
        "give the store of a run to resume",
        raw=True,
    ),
    Case(
        "resume-completed",
        ["record", "--resume", "{store}"],
        "is a completed run",
        "record a new run",
        raw=True,
    ),
    Case(
        "resume-with-set",
        ["record", "--resume", "{killed}", "--set", "train.lr=0.1"],
        "takes the run's configuration from its store",
        "drop --set",
        raw=True,
    ),
    Case(
        "resume-a-folder",
        ["record", "--resume", "{tmp}/mine"],
        "is not a dynalign run store",
        "give the path of a store",
        lambda tmp: _dirs("mine")(tmp) or _file("mine/a.txt")(tmp),
        raw=True,
    ),
    Case(
        "resume-empty-folder",
        ["record", "--resume", "{tmp}/empty"],
        "is empty",
        "record it again",
        _dirs("empty"),
        raw=True,
    ),
    Case(
        "resume-schema-1",
        ["record", "--resume", "{killed}"],
        "schema version 1",
        "record it again",
        raw=True,
    ),
    Case(
        "inspect-missing",
        ["inspect", "{tmp}/none.zarr"],
        "does not exist",
        "give the path of a run store",
    ),
    Case(
        "inspect-a-file",
        ["inspect", "{tmp}/f"],
        "is not a readable zarr store",
        "give the path of a run store",
        _file("f", b"\x00\x01binary"),
    ),
    Case(
        "inspect-foreign-zarr",
        ["inspect", "--check", "{tmp}/other.zarr"],
        "not a dynalign run",
        "give the path of a run store",
        _foreign_zarr,
    ),
    Case(
        "inspect-no-committed",
        ["inspect", "--json", "{tmp}/nocommit.zarr"],
        "committed lengths",
        "record the run again",
        _without_committed,
    ),
    Case(
        "analyze-no-committed",
        ["analyze", "{tmp}/nocommit.zarr"],
        "committed lengths",
        "record the run again",
        _without_committed,
    ),
    Case(
        "report-damaged-config",
        ["report", "{store}", "{damaged}", "--out", "{tmp}/sub/r.html", "--pdf"],
        "damaged.zarr: the run's 'config' attribute is not valid JSON",
        "record the run again",
    ),
]


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """A real tiny run, a killed one (status running, no epoch yet) and one whose config
    attribute is damaged (it opens, but the report cannot describe it)."""
    root = tmp_path_factory.mktemp("bad-inputs")
    store = root / "tiny.zarr"
    result = CliRunner().invoke(cli, ["record", "--out", str(store), *TINY_RUN])
    assert result.exit_code == 0, result.output
    killed = write_run(make_run(steps=2, status="running"), root / "killed.zarr")
    damaged = root / "damaged.zarr"
    shutil.copytree(store, damaged)
    meta = json.loads((damaged / "zarr.json").read_text())
    meta["attributes"]["config"] = "{not json"
    (damaged / "zarr.json").write_text(json.dumps(meta))
    STORE_FOR_SETUP[:] = [str(store)]
    return {"store": str(store), "killed": str(killed), "damaged": str(damaged)}


def _listing(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_clean_error(case, tmp_path, stores):
    if case.setup is not None:
        case.setup(tmp_path)
    before = _listing(tmp_path)
    args = [a.format(tmp=tmp_path, **stores) for a in case.args]
    out = tmp_path / "out.zarr"
    if case.record:  # the case's own values come after SMALL, so they win
        small = SMALL_CONVNET if "convnet" in args else SMALL
        args = ["record", *small, *args[1:], "--quiet", "--out", str(out)]
    result = CliRunner().invoke(cli, args)
    text = result.output
    assert "Traceback" not in text and not isinstance(result.exception, AssertionError)
    assert result.exit_code == 2, text
    # warnings about the store (a killed writer, a missing chunk) may come first
    lines = [line for line in text.strip().splitlines() if not line.startswith("warning: ")]
    assert len(lines) == 1 and lines[0].startswith("Error: "), text
    assert case.problem in lines[0], lines[0]
    assert case.fix in lines[0], lines[0]
    assert not out.exists()
    assert _listing(tmp_path) == before  # no store, report, temporary or new directory


def test_the_table_is_large_and_its_ids_unique():
    assert len(CASES) >= 65
    assert len({c.id for c in CASES}) == len(CASES)


def test_a_report_that_fails_midway_leaves_no_partial_file(tmp_path, stores, monkeypatch):
    """The HTML and the PDF are renamed into place only when complete (and on Ctrl-C too)."""

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(report_module, "_contents", boom)  # runs after every section is drawn
    with pytest.raises(KeyboardInterrupt):
        report_module.write_report(
            [stores["store"], stores["killed"]], tmp_path / "new" / "r.html", pdf=True
        )
    assert list(tmp_path.iterdir()) == []
