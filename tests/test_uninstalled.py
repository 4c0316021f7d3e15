"""Which cardigan a run imports: a Snakemake whose Python does not have cardigan installed runs
the checkout's own package, and an installed copy whose code is not the checkout's is refused.

The first tests hide the installed package: a ``sitecustomize`` on PYTHONPATH takes the folder that
provides it off ``sys.path``, in the Snakemake process and in every job it starts. The workflow
copy then has only its own ``src/`` to import cardigan from.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

from workflow_helpers import REPO, copy_workflow, snakemake

from cardigan.core import layout
from cardigan.core.code_fingerprint import package_root


def hide_installed_cardigan(tmp_path: Path) -> dict[str, str]:
    """Environment for a Python that cannot import the installed cardigan."""
    installed = package_root().parent.resolve()
    hider = tmp_path / "hide-cardigan"
    hider.mkdir()
    (hider / "sitecustomize.py").write_text(
        textwrap.dedent(
            f"""\
            import os, sys
            sys.path[:] = [p for p in sys.path if os.path.realpath(p or ".") != {str(installed)!r}]
            """
        )
    )
    return {"PYTHONPATH": str(hider)}


def test_hiding_works(tmp_path):
    env = hide_installed_cardigan(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-c", "import cardigan"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0 and "No module named 'cardigan'" in proc.stderr


def test_uninstalled_runs_the_checkouts_package(tmp_path):
    work = copy_workflow(tmp_path / "run")
    shutil.copytree(REPO / "src", work / "src", ignore=shutil.ignore_patterns("__pycache__"))
    env = hide_installed_cardigan(tmp_path)

    proc = snakemake(work, "--lint", env=env)
    assert "Congratulations" in proc.stdout + proc.stderr

    # phantom and extract import cardigan in their jobs, which start with the hiding
    # sitecustomize too: they ran, so the copy's package reached them.
    snakemake(work, "extract", env=env)
    assert all((work / f).is_file() for f in layout.extracted(layout.SPLITS, ["4CH"]))


def test_no_package_anywhere_is_a_clear_error(tmp_path):
    work = copy_workflow(tmp_path / "run")
    proc = snakemake(work, "-n", env=hide_installed_cardigan(tmp_path), check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "the cardigan package is not importable" in out
    assert str(work / "src") in out and "pip install -e ." in out


def test_installed_package_other_than_the_checkouts_is_refused(tmp_path):
    work = copy_workflow(tmp_path / "run")
    shutil.copytree(REPO / "src", work / "src", ignore=shutil.ignore_patterns("__pycache__"))
    # The installed package (this checkout's, as the tests run) holds the same code as the copy.
    snakemake(work, "-n")

    # The copy moves on (an edit, a `git pull`) while the installed package stays behind.
    model = work / "src" / "cardigan" / "gan" / "model.py"
    model.write_text(model.read_text() + "\n# edited\n")
    proc = snakemake(work, "-n", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert f"imports cardigan from {package_root()}" in out
    assert "1 file(s) differ (gan/model.py)" in out
    assert f"pip install -e {work}" in out


def test_installed_package_of_another_version_is_a_clear_error(tmp_path):
    # An older cardigan: it lacks a name the workflow imports.
    pkg = tmp_path / "old" / "cardigan"
    shutil.copytree(package_root(), pkg, ignore=shutil.ignore_patterns("__pycache__"))
    fingerprint = pkg / "core" / "code_fingerprint.py"
    fingerprint.write_text(fingerprint.read_text().replace("def differing_files(", "def _gone("))
    work = copy_workflow(tmp_path / "run")
    proc = snakemake(work, "-n", env={"PYTHONPATH": str(pkg.parent)}, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert f"imports cardigan from {pkg}, another version than this workflow's" in out
    assert "differing_files" in out and "pip install -e ." in out
