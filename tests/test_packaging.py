"""The installed names: everything lives under ``dynalign``; no bare ``cli`` or ``analyses``."""

import subprocess
import sys


def _imports(name: str, cwd) -> bool:
    done = subprocess.run(
        [sys.executable, "-c", f"import {name}"], cwd=cwd, capture_output=True, text=True
    )
    return done.returncode == 0


def test_cli_and_analyses_install_under_dynalign(tmp_path):
    # from a folder outside the repository, so the working directory cannot supply the names
    assert _imports("dynalign.cli.main", tmp_path)
    assert _imports("dynalign.analyses.report", tmp_path)
    assert not _imports("cli", tmp_path)
    assert not _imports("analyses", tmp_path)


def test_python_m_runs_the_command(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "dynalign.cli", "--help"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert "record" in done.stdout
