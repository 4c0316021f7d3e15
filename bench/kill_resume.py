"""A real training run killed part-way (SIGKILL, as a cluster's time limit does) and resumed.

    python bench/kill_resume.py --device cuda --iterations 100     # bench/gpu_check.sh
    python bench/kill_resume.py --device cpu --iterations 12 --size 64 --ngf 4   # smoke

Writes a small synthetic extracted split (tests/train_fixtures.py), runs ``cardigan.gan.launch`` as
its own process with a checkpoint every ``iterations / 5`` iterations, kills it once a checkpoint
at or past the middle exists, runs it again, and checks that the second run resumed (log line
"resuming ... at iteration N") and finished every iteration. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--iterations", type=int, default=100)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--ngf", type=int, default=16)
    p.add_argument("--spade-hidden", type=int, default=128)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    sys.path.insert(0, str(ROOT / "tests"))
    from train_fixtures import write_split

    from cardigan.core.config import validate
    from cardigan.gan.checkpoint import load_state

    per_epoch = 4
    epochs = max(2, args.iterations // per_epoch)
    every = max(1, args.iterations // 5)
    with tempfile.TemporaryDirectory(prefix="cardigan_kill_") as d:
        d = Path(d)
        images, annos = write_split(d / "data", patients=per_epoch * args.batch // 2,
                                    size=args.size)
        train = dict(validate({})["train"], device=args.device, epochs=epochs,
                     batch_size=args.batch, ngf=args.ngf, ndf=args.ngf, checkpoint_every=every,
                     spade_hidden=args.spade_hidden,
                     log_every=every, sample_every=epochs)
        (d / "train.yaml").write_text(yaml.safe_dump({"train": train}))
        cmd = [sys.executable, "-m", "cardigan.gan.launch", "--images", str(images), "--annos",
               str(annos), "--train-config", str(d / "train.yaml"), "--image-size",
               str(args.size), "--out-dir", str(d / "out"), "--state-dir", str(d / "out/state"),
               "--threads", str(args.threads)]
        env = dict(os.environ, PYTHONPATH=str(ROOT / "src") + os.pathsep
                   + os.environ.get("PYTHONPATH", ""))
        t0 = time.perf_counter()
        first = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
        killed_at = None
        while first.poll() is None:
            states = list((d / "out/state").glob("*/state.pt"))
            if states:
                try:
                    step = int(load_state(states[0])["step"])
                except Exception:  # noqa: BLE001 - being replaced right now: look again
                    step = 0
                if step >= epochs * per_epoch // 2:
                    first.send_signal(signal.SIGKILL)
                    first.wait()
                    killed_at = step
                    break
            time.sleep(0.2)
        t_first = time.perf_counter() - t0
        second = subprocess.run(cmd, env=env, capture_output=True, text=True)
        t_total = time.perf_counter() - t0
        final = load_state(next((d / "out/state").glob("*/state.pt")))
        resumed = next((ln for ln in second.stderr.splitlines() if "resuming" in ln), None)
        result = {"device": args.device, "iterations": epochs * per_epoch,
                  "killed_after_checkpoint": killed_at, "first_run_s": round(t_first, 1),
                  "total_s": round(t_total, 1), "resumed_line": resumed,
                  "final_step": int(final["step"]), "exit": second.returncode,
                  "generator_written": (d / "out/generator.pt").exists()}
        print(json.dumps(result))
        ok = (second.returncode == 0 and killed_at is not None and resumed is not None
              and result["final_step"] == epochs * per_epoch and result["generator_written"])
        if not ok:
            sys.stderr.write(second.stderr[-3000:])
            sys.exit(1)


if __name__ == "__main__":
    main()
