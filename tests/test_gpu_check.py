"""bench/gpu_check.sh in its CPU smoke mode: every section runs (tiny sizes), is time-boxed, and
leaves its results in the output folder."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ["cuda_tests", "iter_fp32", "iter_bf16", "iter_bf16_cl", "iter_compile", "max_batch",
            "sample", "kill_resume"]


def test_gpu_check_smoke_mode(tmp_path):
    env = dict(os.environ, CARDIGAN_GPU_CHECK_SMOKE="1", GPU_CHECK_OUT=str(tmp_path),
               OMP_NUM_THREADS="1")
    proc = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh")], env=env, text=True,
                          capture_output=True, timeout=1500)
    summary = (tmp_path / "summary.txt").read_text()
    assert proc.returncode == 0, summary[-3000:]
    for name in SECTIONS:
        assert f"-- {name}: exit 0 after" in summary, name
        assert (tmp_path / f"{name}.txt").stat().st_size > 0, name
    for name in ("iter_fp32", "iter_bf16", "iter_bf16_cl", "iter_compile"):
        results = json.loads((tmp_path / f"{name}.json").read_text())["results"]
        (r,) = results.values()
        assert r["images_per_s"] > 0 and r["flops_per_iter"] > 0, name
    assert len(json.loads((tmp_path / "iter_bf16_cl.json").read_text())["results"]["optimised"]
               ["top_kernels"]) == 15
    assert "largest batch that fits: 4" in (tmp_path / "max_batch.txt").read_text()
    kill = json.loads((tmp_path / "kill_resume.txt").read_text().splitlines()[-1])
    assert kill["final_step"] == kill["iterations"] == 8 and kill["resumed_line"]
