"""``cardigan`` command: run one stage outside Snakemake (the pipeline itself is the Snakefile).

    cardigan phantom OUT --patients 50 --seed 0
    cardigan extract SRC OUT --image-size 256 ...
    cardigan train --images ... --annos ... --train-config config.yaml
    cardigan sample   --config config.yaml [--data-dir results/data] [--generator ...] [--out ...]
    cardigan export   --config config.yaml [--samples ...] [--out-dir results/export]
    cardigan evaluate --config config.yaml [--synthetic ...] [--out-dir results/evaluate]

phantom, extract and train forward their arguments to the stage module (``--help`` there);
sample, export and evaluate read their config section from a cardiGAN config file (validated
like the workflow's) and the other stages' outputs from the workflow's default places.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from pathlib import Path

from . import __version__
from .config import ConfigError, load_config
from .dataio import split_paths

FORWARDED = {"phantom": "cardigan.phantom", "extract": "cardigan.extract", "train": "cardigan.train"}
LOCAL = ("sample", "export", "evaluate")


def _parser(stage: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"cardigan {stage}")
    p.add_argument("--config", default=None, help="cardiGAN config YAML (default: built-in defaults)")
    p.add_argument("--data-dir", default="results/data", help="extracted dataset folder")
    p.add_argument("--threads", type=int, default=1)
    return p


def _sample(argv: list[str]) -> None:
    from .sample import run_sample

    p = _parser("sample")
    p.add_argument("--generator", default="results/train/generator.pt")
    p.add_argument("--out", default="results/sample/samples.h5")
    a = p.parse_args(argv)
    cfg = load_config(a.config)
    views = cfg["data"]["views"]
    annos = [split_paths(a.data_dir, s, v)[1] for s in cfg["sample"]["mask_splits"] for v in views]
    real = [split_paths(a.data_dir, "train", v)[1] for v in views]
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    run_sample(a.generator, annos, real, cfg["sample"], a.out, threads=a.threads)


def _export(argv: list[str]) -> None:
    from .export import run_export

    p = _parser("export")
    p.add_argument("--samples", default="results/sample/samples.h5")
    p.add_argument("--generator", default="results/train/generator.pt")
    p.add_argument("--out-dir", default="results/export")
    a = p.parse_args(argv)
    cfg = load_config(a.config)
    views = cfg["data"]["views"]
    pairs = [split_paths(a.data_dir, "train", v) for v in views]
    out = Path(a.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    outputs = {"h5": out / "synthetic.h5", "preview": out / "preview.png", "card": out / "dataset_card.md"}
    nn = cfg["export"]["nnunet"]
    if "nnunet" in cfg["export"]["formats"]:
        outputs["nnunet"] = out / "nnunet" / f"Dataset{nn['dataset_id']:03d}_{nn['name']}"
        outputs["datalist"] = out / "datalist.json"
    test = [split_paths(a.data_dir, "test", v) for v in views] if nn["test_split"] else []
    provenance = {k: cfg[k] for k in ("data", "phantom", "train", "sample", "export")}
    run_export(a.samples, a.generator, [i for i, _ in pairs], [m for _, m in pairs],
               cfg["export"], provenance, outputs, test_images=[i for i, _ in test],
               test_annos=[m for _, m in test])


def _evaluate(argv: list[str]) -> None:
    from .evaluate import run_evaluate

    p = _parser("evaluate")
    p.add_argument("--synthetic", default="results/export/synthetic.h5")
    p.add_argument("--out-dir", default="results/evaluate")
    a = p.parse_args(argv)
    cfg = load_config(a.config)
    out = Path(a.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    run_evaluate(a.synthetic, a.data_dir, cfg["data"]["views"], cfg["evaluate"],
                 cfg["data"]["source"], out / "metrics.csv", out / "dice.png", out / "summary.md",
                 threads=a.threads)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0
    if argv[0] == "--version":
        print(f"cardigan {__version__}")
        return 0
    stage, rest = argv[0], argv[1:]
    if stage in FORWARDED:
        return int(importlib.import_module(FORWARDED[stage]).main(rest) or 0)
    if stage not in LOCAL:
        print(f"cardigan: unknown stage {stage!r}; choose from "
              f"{', '.join([*FORWARDED, *LOCAL])}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        {"sample": _sample, "export": _export, "evaluate": _evaluate}[stage](rest)
    except (ConfigError, ValueError, OSError) as err:
        print(f"cardigan {stage}: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
