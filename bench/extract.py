"""Benchmark of stage extract: patients/s and peak RSS against the rate of merely reading the files.

For each N in ``--patients`` (default 50 500): writes an N-patient phantom at original sizes
(2023 NIfTI layout, no sequences) into a temporary folder, then, each in a fresh subprocess:

- bare read: every selected image and mask read with SimpleITK (one process), no checks;
- extraction: :func:`cardigan.data.extract.extract` with ``--threads`` processes.

Prints patients/s for both, their ratio, and the extraction's peak RSS (the main process, which
writes, and the largest worker). Targets: extraction >= 0.5 x the bare read rate with 2 threads;
main-process peak RSS for 500 patients within 20% of that for 50.

    python bench/extract.py --patients 50 500 --threads 2
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

READ = textwrap.dedent("""
    import json, resource, sys, time
    from pathlib import Path
    import SimpleITK as sitk
    root, views, instants = Path(sys.argv[1]), sys.argv[2].split(","), sys.argv[3].split(",")
    patients = sorted((root / "database_nifti").iterdir())
    t = time.perf_counter()
    for p in patients:
        for v in views:
            for i in instants:
                for suffix in ("", "_gt"):
                    sitk.GetArrayFromImage(sitk.ReadImage(str(p / f"{p.name}_{v}_{i}{suffix}.nii.gz")))
    seconds = time.perf_counter() - t
    print(json.dumps({"seconds": seconds, "patients": len(patients),
                      "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
""")

EXTRACT = textwrap.dedent("""
    import json, resource, sys, time
    from cardigan.data.extract import extract
    root, out, views, instants, size, threads = sys.argv[1:7]
    t = time.perf_counter()
    s = extract(root, out, views=views.split(","), instants=instants.split(","),
                image_size=int(size), threads=int(threads))
    seconds = time.perf_counter() - t
    print(json.dumps({"seconds": seconds, "patients": sum(s.patients.values()),
                      "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "worker_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
""")


def _run(code: str, *args) -> dict:
    done = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True,
                          text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--patients", type=int, nargs="+", default=[50, 500])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--image-size", type=int, default=256)
    ap.add_argument("--views", default="2CH,4CH")
    ap.add_argument("--instants", default="ED,ES")
    ap.add_argument("--workdir", type=Path, default=None,
                    help="keep phantoms here (reused when present) instead of a temporary folder")
    args = ap.parse_args()

    from cardigan.phantom.write import write_phantom

    with tempfile.TemporaryDirectory(prefix="bench_extract_") as tmp:
        work = args.workdir or Path(tmp)
        rows = []
        for n in args.patients:
            src = work / f"phantom_{n}"
            if not (src / "database_nifti").is_dir():
                t = time.perf_counter()
                write_phantom(src, n, seed=0, threads=args.threads, sequences=False)
                print(f"[N={n}] phantom written in {time.perf_counter() - t:.1f} s", flush=True)
            read = _run(READ, src, args.views, args.instants)
            out = Path(tmp) / f"out_{n}"
            ext = _run(EXTRACT, src, out, args.views, args.instants, args.image_size, args.threads)
            read_rate = read["patients"] / read["seconds"]
            ext_rate = ext["patients"] / ext["seconds"]
            rows.append((n, read_rate, ext_rate, ext["rss_mb"], ext["worker_rss_mb"]))
            print(f"[N={n}] bare read {read_rate:.1f} patients/s | extraction ({args.threads} "
                  f"threads) {ext_rate:.1f} patients/s = {ext_rate / read_rate:.2f} x read | "
                  f"peak RSS main {ext['rss_mb']:.0f} MB, largest worker "
                  f"{ext['worker_rss_mb']:.0f} MB", flush=True)
        if len(rows) > 1:
            base, last = rows[0], rows[-1]
            print(f"peak RSS main N={last[0]} / N={base[0]}: {last[3] / base[3]:.2f} "
                  f"(target <= 1.20); extraction / read rate at N={last[0]}: "
                  f"{last[2] / last[1]:.2f} (target >= 0.50)")


if __name__ == "__main__":
    main()
