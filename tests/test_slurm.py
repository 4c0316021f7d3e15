"""The tiny pipeline on a real SLURM cluster (the one-node cluster that .ci/slurm-up.sh starts).

Runs ``snakemake --profile profiles/slurm --workflow-profile profiles/slurm-ci`` (the CI layer:
no GPU, 2 CPUs, squeue status, no account) and checks that every output is there and that every
non-local rule ran inside a SLURM job. Skips when SLURM is absent, unless CARDIGAN_REQUIRE_SLURM=1
(set by .ci/run), which turns a missing or idle-less cluster into a failure.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest
from workflow_helpers import copy_workflow, read_manifest, snakemake

pytestmark = [pytest.mark.slow, pytest.mark.slurm]

REQUIRED = os.environ.get("CARDIGAN_REQUIRE_SLURM", "") not in ("", "0")
# Rules that run on the submitting host (`localrule: True`); every other rule must be a SLURM job.
LOCAL_RULES = {"manifest"}


def _cluster_problem() -> str | None:
    """None if a SLURM node accepts jobs, else why not."""
    for tool in ("sbatch", "squeue", "sinfo"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    try:
        states = subprocess.run(
            ["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=30
        )
    except subprocess.TimeoutExpired:
        return "sinfo did not answer within 30 s"
    if states.returncode != 0:
        return f"sinfo failed: {states.stderr.strip()}"
    usable = {s.rstrip("*") for s in states.stdout.split()} & {"idle", "mix", "alloc"}
    if not usable:
        return f"no SLURM node is up (sinfo states: {states.stdout.split() or 'none'})"
    return None


@pytest.fixture(scope="module")
def cluster():
    problem = _cluster_problem()
    if problem is not None:
        if REQUIRED:
            pytest.fail(f"CARDIGAN_REQUIRE_SLURM is set but the cluster is not up: {problem}")
        pytest.skip(f"no SLURM cluster here ({problem}); .ci/slurm-up.sh starts one")


def test_tiny_pipeline_runs_as_slurm_jobs(cluster, tmp_path):
    run_dir = copy_workflow(tmp_path / "run")
    env = {"SBATCH_PARTITION": "", "SBATCH_ACCOUNT": ""}
    snakemake(
        run_dir,
        "--profile",
        "profiles/slurm",
        "--workflow-profile",
        "profiles/slurm-ci",
        env=env,
    )
    # Outputs complete: the manifest (written last) lists every declared output, all present.
    config_hash, rows = read_manifest(run_dir)
    assert re.fullmatch(r"[0-9a-f]{64}", config_hash)
    assert rows, "empty manifest"
    for path in rows:
        assert (run_dir / path).is_file(), path

    logs = sorted((run_dir / "results" / "logs").glob("*.log"))
    rules = {p.stem for p in logs}
    assert {"phantom", "extract", "train", "sample", "export", "manifest"} <= rules, rules
    job_ids = {}
    for log in logs:
        text = log.read_text()
        m = re.search(r"SLURM_JOB_ID=(\d+)", text)
        if log.stem in LOCAL_RULES:
            if "SLURM_JOB_ID" not in os.environ:
                assert m is None, f"local rule {log.stem} ran inside a SLURM job"
        else:
            assert m, f"rule {log.stem} did not run as a SLURM job:\n{text[:2000]}"
            job_ids[log.stem] = int(m.group(1))
    # One job per rule, each with its own id, each with the executor's SLURM log kept.
    assert len(set(job_ids.values())) == len(job_ids), job_ids
    slurm_logs = list((run_dir / ".snakemake" / "slurm_logs").rglob("*.log"))
    for rule, job_id in job_ids.items():
        assert any(
            p.name == f"{job_id}.log" and f"rule_{rule}" in p.as_posix() for p in slurm_logs
        ), (rule, job_id, slurm_logs)
