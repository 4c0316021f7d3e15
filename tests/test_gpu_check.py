"""bench/gpu_check.sh in its CPU smoke mode: every section runs (tiny sizes), is time-boxed, and
leaves its results in the output folder — in a Python that, like the GPU machine's image, cannot
import the project's dependencies that the check neither needs nor carries as wheels
(bench/gpu_wheels.sh)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ["cuda_tests", "iter_fp32", "iter_bf16", "iter_bf16_cl", "iter_compile", "max_batch",
            "sample", "kill_resume"]


#: On the project's dependency list, absent from the GPU image (the device tool's KINDS.md), and
#: not carried: the check must run without them.
NOT_ON_GPU_IMAGE = ("SimpleITK", "nibabel", "monai", "snakemake")


def without(modules: tuple[str, ...], folder: Path) -> str:
    """A PYTHONPATH entry whose sitecustomize makes ``modules`` unimportable."""
    folder.mkdir()
    (folder / "sitecustomize.py").write_text(textwrap.dedent(f"""\
        import sys
        class _Absent:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {modules!r}:
                    raise ModuleNotFoundError(f"No module named {{name!r}} (not on the GPU image)")
        sys.meta_path.insert(0, _Absent())
        """))
    return str(folder)


def test_gpu_check_smoke_mode(tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, CARDIGAN_GPU_CHECK_SMOKE="1", GPU_CHECK_OUT=str(out),
               OMP_NUM_THREADS="1", PYTHONPATH=without(NOT_ON_GPU_IMAGE, tmp_path / "image"),
               PYTHON=sys.executable)
    absent = subprocess.run([sys.executable, "-c", "import SimpleITK"], env=env,
                            capture_output=True, text=True)
    assert "not on the GPU image" in absent.stderr
    proc = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh")], env=env, text=True,
                          capture_output=True, timeout=1500)
    summary = (out / "summary.txt").read_text()
    assert proc.returncode == 0, summary[-3000:]
    for name in SECTIONS:
        assert f"-- {name}: exit 0 after" in summary, name
        assert (out / f"{name}.txt").stat().st_size > 0, name
    for name in ("iter_fp32", "iter_bf16", "iter_bf16_cl", "iter_compile"):
        results = json.loads((out / f"{name}.json").read_text())["results"]
        (r,) = results.values()
        assert r["images_per_s"] > 0 and r["flops_per_iter"] > 0, name
    assert len(json.loads((out / "iter_bf16_cl.json").read_text())["results"]["optimised"]
               ["top_kernels"]) == 15
    assert "largest batch that fits: 4" in (out / "max_batch.txt").read_text()
    kill = json.loads((out / "kill_resume.txt").read_text().splitlines()[-1])
    assert kill["final_step"] == kill["iterations"] == 8 and kill["resumed_line"]
