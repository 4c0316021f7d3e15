"""Running the real Snakemake workflow from tests: copies of the repo, runs, dry-run parsing.

The tests never run the workflow inside the checkout. They copy the files a run needs into a
temporary folder and run ``python -m snakemake`` there on ``tests/config/tiny.yaml``. A complete
tiny run is expensive (about a minute), so :func:`completed_run` makes one per pytest session and
the tests take copies of it (:func:`clone`, preserving mtimes and Snakemake's metadata).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
TINY = "tests/config/tiny.yaml"
# What a run needs from the checkout (envs/ only for the rules' `conda:` paths, config/ for the presets).
WORKFLOW_FILES = ["Snakefile", "config.yaml", "config", "workflow", "profiles", "envs", "tests/config"]
# Generous: a wedged run must fail the test, not hang CI.
RUN_TIMEOUT_S = 900

_COMPLETED: dict[str, Path] = {}


def copy_workflow(dest: Path) -> Path:
    """Copy the workflow (not results/, not .snakemake/) into ``dest`` and return it."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in WORKFLOW_FILES:
        src = REPO / name
        if not src.exists():
            continue
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, target)
    return dest


def clone(run_dir: Path, dest: Path) -> Path:
    """Copy a run folder with mtimes and ``.snakemake/`` metadata, so Snakemake sees the same state."""
    subprocess.run(["cp", "-a", f"{run_dir}/.", str(dest)], check=True)
    return dest


def snakemake(
    workdir: Path,
    *args: str,
    check: bool = True,
    cores: int = 2,
    tiny: bool = True,
    timeout: float = RUN_TIMEOUT_S,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess:
    """Run ``python -m snakemake`` in ``workdir`` (tiny config, ``cores`` cores) and capture output.

    With ``check`` a non-zero exit raises AssertionError carrying the tail of the output.
    """
    # Targets and options first: --configfile takes several values and would swallow a target.
    cmd = [sys.executable, "-m", "snakemake", *args, "--cores", str(cores)]
    if tiny:
        cmd += ["--configfile", TINY]
    proc = subprocess.run(
        cmd,
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"snakemake {' '.join(args)} failed ({proc.returncode}) in {workdir}:\n"
            + (proc.stdout + proc.stderr)[-6000:]
        )
    return proc


_STATS_ROW = re.compile(r"^(\S+)\s+(\d+)$")


def planned_jobs(workdir: Path, *args: str, env: dict[str, str] | None = None) -> dict[str, int]:
    """Rules a ``snakemake -n`` would run (name -> job count), without the ``all`` target rule."""
    proc = snakemake(workdir, "-n", *args, env=env)
    out = proc.stdout + proc.stderr
    if "Nothing to be done" in out:
        return {}
    lines = out.splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == "Job stats:")
    except StopIteration:
        raise AssertionError(f"no job stats in the dry-run output:\n{out[-4000:]}") from None
    jobs: dict[str, int] = {}
    for line in lines[start + 1 :]:
        m = _STATS_ROW.match(line.strip())
        if line.strip().startswith("total"):
            break
        if m and m.group(1) not in ("job", "all"):
            jobs[m.group(1)] = int(m.group(2))
    return jobs


def completed_run(base: Path) -> Path:
    """A complete tiny run, made once per pytest session under ``base`` (then reused).

    Under pytest-xdist ``base`` is one worker's folder; the workers share one run in the folder
    above it, made by the first that needs it while the others wait on a lock.
    Treat it as read-only: take a :func:`clone` to change anything.
    """
    if "tiny" not in _COMPLETED:
        if os.environ.get("PYTEST_XDIST_WORKER"):
            base = base.parent
        run_dir = base / "tiny-complete"
        with open(base / "tiny-complete.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            # The manifest is the run's last output: without it, a run that another worker left
            # unfinished (its test failed) starts over.
            if not (run_dir / "results" / "manifest.tsv").is_file():
                shutil.rmtree(run_dir, ignore_errors=True)
                snakemake(copy_workflow(run_dir))
        _COMPLETED["tiny"] = run_dir
    return _COMPLETED["tiny"]


def edit_tiny(work: Path, section: str, key: str, value) -> None:
    """Set ``section.key`` in the run's copy of the tiny config."""
    path = work / TINY
    config = yaml.safe_load(path.read_text())
    config.setdefault(section, {})[key] = value
    path.write_text(yaml.safe_dump(config, sort_keys=False))


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_manifest(run_dir: Path) -> tuple[str, dict[str, str]]:
    """``(config hash, {path: sha256})`` from ``results/manifest.tsv``."""
    lines = (run_dir / "results" / "manifest.tsv").read_text().splitlines()
    assert lines[0].startswith("# config_sha256\t"), lines[0]
    config_hash = lines[0].split("\t", 1)[1]
    assert lines[1] == "path\tbytes\tsha256", lines[1]
    rows = {}
    for line in lines[2:]:
        path, size, digest = line.split("\t")
        rows[path] = digest
        assert int(size) >= 0
    return config_hash, rows


def tree_hashes(run_dir: Path, sub: str = "results") -> dict[str, str]:
    """sha256 of every file under ``run_dir/sub`` except logs and benchmarks."""
    root = run_dir / sub
    out = {}
    for f in sorted(root.rglob("*")):
        rel = f.relative_to(run_dir).as_posix()
        if f.is_file() and not rel.startswith(("results/logs/", "results/benchmarks/")):
            out[rel] = sha256(f)
    return out
