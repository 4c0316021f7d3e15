"""Workflow hygiene, checked like any other behaviour: snakefmt and snakemake --lint are clean."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from workflow_helpers import REPO, copy_workflow


@pytest.mark.skipif(shutil.which("snakefmt") is None, reason="snakefmt is not installed")
def test_snakefmt_check_is_clean():
    proc = subprocess.run(["snakefmt", "--check", "Snakefile", "workflow"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_snakemake_lint_is_clean(tmp_path: Path):
    work = copy_workflow(tmp_path / "wf")
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--lint", "--cores", "1"], cwd=work,
                          capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert "Congratulations, your workflow is in a good condition!" in out, out[-3000:]
