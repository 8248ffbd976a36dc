"""`dynalign --help`, `presets` and `record --help` answer at once: they import none of the
heavy libraries (torch, xarray, zarr, matplotlib, dask), which the commands that use them
import themselves. Checked by the modules loaded, not by a timing."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from dynalign.cli.main import LAZY_COMMANDS, cli

HEAVY = ("torch", "xarray", "zarr", "matplotlib", "dask", "pandas", "scipy")

#: imports dynalign's CLI in a fresh interpreter, runs the given arguments, then prints the
#: heavy modules it loaded
PROBE = """
import json, sys
from dynalign.cli.main import cli
args = json.loads(sys.argv[1])
if args:
    try:
        cli.main(args, prog_name="dynalign", standalone_mode=False)
    except SystemExit:
        pass
heavy = json.loads(sys.argv[2])
print(json.dumps(sorted(m for m in heavy if m in sys.modules)))
"""


def loaded_after(*args: str) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(list(args)), json.dumps(HEAVY)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("args", [(), ("--help",), ("presets",), ("record", "--help")])
def test_light_commands_import_no_heavy_library(args):
    assert loaded_after(*args) == []


def test_the_package_imports_its_readers_on_first_use():
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, dynalign; print('xarray' in sys.modules); "
            "dynalign.open_run, dynalign.load_spec; print('xarray' in sys.modules); "
            "print(sorted(set(dynalign.__all__) - set(dir(dynalign))))",
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:3] == ["False", "True", "[]"]


def test_every_command_is_listed_and_the_lazy_ones_load():
    text = CliRunner().invoke(cli, ["--help"]).output
    for name, (_, line) in LAZY_COMMANDS.items():
        assert f"{name}  " in text and line in text
        result = CliRunner().invoke(cli, [name, "--help"])
        assert result.exit_code == 0 and "Usage: " in result.output
    for name in ("record", "inspect", "presets"):
        assert f"{name}  " in text


#: runs the installed command's entry point, then reports how many objects it left frozen
FREEZE_PROBE = """
import gc, sys
from dynalign.cli.main import main
sys.argv = ["dynalign", *sys.argv[1:]]
try:
    main()
except SystemExit as done:
    print(done.code or 0, gc.get_freeze_count())
"""


@pytest.mark.parametrize("args", [("presets",), ("record", "--epochs", "0")])
def test_the_command_freezes_its_objects_before_the_interpreter_shuts_down(args):
    """Shutdown collections would walk every object torch, numba and zarr made (0.7 s after a
    record); ``main`` freezes them once the command is done, on success and on error alike."""
    done = subprocess.run(
        [sys.executable, "-c", FREEZE_PROBE, *args], capture_output=True, text=True
    )
    code, frozen = (int(v) for v in done.stdout.split()[-2:])  # after the command's output
    assert code == (0 if args == ("presets",) else 2)  # click's usage error: epochs >= 1
    assert frozen > 1000, done.stderr
