"""The README's main job and quick tour, pasted into a fresh folder, run without an error.

The folder gets only what the set-up command leaves: a `.venv` (this environment). The main
job's command is taken from the README's first code block and the tour's lines from the block
under "A quick tour", both verbatim, and fed to bash as a user pasting them would.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _bash_blocks(text: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", text, flags=re.S)


def main_job_command() -> str:
    """The set-up command's last step: the main job (the venv already exists here)."""
    setup = _bash_blocks(README.read_text(encoding="utf-8"))[0].strip()
    job = setup.split(" && ")[-1]
    assert job.startswith(".venv/bin/dynalign record"), setup
    return job


def tour_script() -> str:
    text = README.read_text(encoding="utf-8")
    tour = text[text.index("## A quick tour") :]
    return _bash_blocks(tour)[0]


def _fresh_folder(tmp_path: Path) -> dict[str, str]:
    """A folder with `.venv` pointing at this environment; PATH without any venv on it."""
    (tmp_path / ".venv").symlink_to(Path(sys.prefix), target_is_directory=True)
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["PATH"] = os.pathsep.join(
        p for p in env.get("PATH", "").split(os.pathsep) if not Path(p, "activate").exists()
    )
    return env


def _bash(script: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", "-e", "-o", "pipefail"],
        input=script,
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_tour_pasted_after_set_up_runs_without_an_error(tmp_path):
    if not (Path(sys.prefix) / "bin" / "activate").exists():
        pytest.skip("the tour activates a virtual environment; this Python is not in one")
    env = _fresh_folder(tmp_path)
    done = _bash(main_job_command() + "\n" + tour_script(), tmp_path, env)
    assert done.returncode == 0, f"stdout:\n{done.stdout[-3000:]}\nstderr:\n{done.stderr[-3000:]}"
    assert "command not found" not in done.stderr
    for store in ("fa-digits", "bp", "fc8-fa-bn", "d5"):
        assert (tmp_path / "runs" / f"{store}.zarr" / "zarr.json").is_file(), store
    assert (tmp_path / "report.html").stat().st_size > 10_000
    assert (tmp_path / "report.pdf").read_bytes().startswith(b"%PDF")
    # the TOML file the tour writes is the one `record --config` read
    inspected = _bash(
        "source .venv/bin/activate\ndynalign inspect runs/d5.zarr --json", tmp_path, env
    )
    assert '"dfa"' in inspected.stdout and '"depth": 5' in inspected.stdout


def test_the_tour_fails_when_a_line_fails(tmp_path):
    """The check can fail: bash -e stops at a broken line, as a user would notice."""
    env = _fresh_folder(tmp_path)
    done = _bash("source .venv/bin/activate\ndynalign inspect runs/missing.zarr\n", tmp_path, env)
    assert done.returncode != 0
