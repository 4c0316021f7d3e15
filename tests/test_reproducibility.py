"""Two tiny runs from scratch produce the same bytes for every declared output (CPU)."""

from __future__ import annotations

from pathlib import Path

import pytest
from workflow_helpers import completed_run, copy_workflow, read_manifest, snakemake, tree_hashes

pytestmark = pytest.mark.slow


def declared_outputs(run_dir: Path) -> list[str]:
    """Every output file of the run's DAG, from ``snakemake --summary`` (folders expanded)."""
    proc = snakemake(run_dir, "--summary")
    lines = proc.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("output_file\t"))
    files = []
    for line in lines[header + 1 :]:
        if not line.strip():
            continue
        path = run_dir / line.split("\t")[0]
        if path.is_dir():
            files += [p.relative_to(run_dir).as_posix() for p in sorted(path.rglob("*")) if p.is_file()]
        else:
            files.append(path.relative_to(run_dir).as_posix())
    return files


def test_two_runs_from_scratch_are_identical(tmp_path_factory):
    first = completed_run(tmp_path_factory.getbasetemp())
    second = copy_workflow(tmp_path_factory.mktemp("repro") / "run")
    snakemake(second)

    # Asked of the second run: the first is shared with other tests (and xdist workers), read-only.
    declared = declared_outputs(second)
    assert "results/manifest.tsv" in declared and "results/train/generator.pt" in declared
    skipped = ("results/logs/", "results/benchmarks/")
    a, b = tree_hashes(first), tree_hashes(second)
    differing = sorted(
        p for p in declared if not p.startswith(skipped) and a.get(p) != b.get(p)
    )
    assert not differing, f"not byte-identical across two runs: {differing}"

    # The manifest lists every declared output (but itself, logs and benchmarks) with its hash.
    config_hash, rows = read_manifest(first)
    unlisted = sorted(
        p for p in declared if not p.startswith(skipped) and p != "results/manifest.tsv" and p not in rows
    )
    assert not unlisted, f"declared outputs missing from manifest.tsv: {unlisted}"
    assert read_manifest(second) == (config_hash, rows)
