"""The ``cardigan`` command: one pipeline stage at a time, outside Snakemake.

Every subcommand reads ``config.yaml`` in the working directory, as the workflow does (or
``--config FILE``; built-in defaults when there is neither), applies ``--set section.key=value``
overrides, validates the result like the workflow, and reads and writes the workflow's paths
(:mod:`cardigan.core.layout`) unless told otherwise. A config or input mistake ends with one line
``cardigan STAGE: error: ...`` and exit status 1. The pipeline itself is the Snakefile.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cardigan.core import layout
from cardigan.core.config import ConfigError, load_config
from cardigan.core.version import __version__

DEFAULT_CONFIG = "config.yaml"

#: Mistakes a user can make (config, paths, data, checkpoints): reported in one line. Other
#: exceptions are bugs and keep their traceback.
USER_ERRORS = (ValueError, OSError, RuntimeError)


def _config(args: argparse.Namespace) -> dict[str, Any]:
    path = args.config
    if path is None and Path(DEFAULT_CONFIG).is_file():
        path = DEFAULT_CONFIG
    return load_config(path, args.set)


# ------------------------------------------------------------------------------------------------
# One function per subcommand: add its arguments, run it.
# ------------------------------------------------------------------------------------------------
def _phantom_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("out", nargs="?", default=layout.PHANTOM_DIR,
                   help=f"output folder, absent or empty (default: {layout.PHANTOM_DIR})")
    p.add_argument("--no-sequences", dest="sequences", action="store_false",
                   help="skip the half-sequence files (faster)")
    p.add_argument("--layout", choices=("nifti2023", "mhd2019"), default="nifti2023",
                   help="CAMUS release layout to write (default: nifti2023, what the workflow uses)")


def _phantom(a: argparse.Namespace, cfg: dict[str, Any]) -> None:
    from cardigan.phantom.write import write_phantom

    write_phantom(a.out, threads=a.threads, sequences=a.sequences, layout=a.layout,
                  **cfg["phantom"])


def _extract_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", nargs="?", default=None,
                   help="CAMUS root folder or legacy single-file .h5 (legacy_h5) (default: data.camus_path, or "
                   f"{layout.PHANTOM_DIR} when data.source is phantom)")
    p.add_argument("out_dir", nargs="?", default=layout.DATA_DIR,
                   help=f"output folder (default: {layout.DATA_DIR})")


def _extract(a: argparse.Namespace, cfg: dict[str, Any]) -> None:
    from cardigan.data.extract import extract

    data = cfg["data"]
    source = a.source or (layout.PHANTOM_DIR if data["source"] == "phantom" else data["camus_path"])
    summary = extract(source, a.out_dir, fmt=data["format"], views=data["views"],
                      instants=data["instants"], image_size=data["image_size"],
                      split=data["split"], threads=a.threads)
    print(f"{summary.frames} frames of {sum(summary.patients.values())} patients "
          f"({summary.source_format}) written to {a.out_dir}")


def _data_dir_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", default=layout.DATA_DIR,
                   help=f"extracted dataset folder (default: {layout.DATA_DIR})")


def _train_args(p: argparse.ArgumentParser) -> None:
    _data_dir_arg(p)
    p.add_argument("--out-dir", default=layout.TRAIN_DIR,
                   help=f"where the outputs go (default: {layout.TRAIN_DIR})")
    p.add_argument("--state-dir", default=layout.TRAIN_STATE_DIR,
                   help=f"resumable training states (default: {layout.TRAIN_STATE_DIR})")
    p.add_argument("--resume", default=None, help="a training-state file to continue from")


def _train(a: argparse.Namespace, cfg: dict[str, Any]) -> None:
    from cardigan.gan.launch import run_training
    from cardigan.gan.train_config import TrainConfig

    views = cfg["data"]["views"]
    run_training(images_h5=layout.extracted(["train"], views, annos=False, data_dir=a.data_dir),
                 annos_h5=layout.extracted(["train"], views, images=False, data_dir=a.data_dir),
                 out_dir=a.out_dir, state_dir=a.state_dir, cfg=TrainConfig.from_dict(cfg["train"]),
                 image_size=cfg["data"]["image_size"], threads=a.threads, resume=a.resume)


def _sample_args(p: argparse.ArgumentParser) -> None:
    _data_dir_arg(p)
    p.add_argument("--generator", default=layout.GENERATOR,
                   help=f"trained generator (default: {layout.GENERATOR})")
    p.add_argument("--out", default=layout.SAMPLES, help=f"samples file (default: {layout.SAMPLES})")
    p.add_argument("--masks", default=None,
                   help="sample from your own masks instead: a folder of mask files (PNG, NIfTI, "
                        "MHA, NRRD) or an HDF5 file; needs only --generator (no training data)")
    p.add_argument("--styles", type=int, default=None,
                   help="with --masks: images per mask (default: sample.samples_per_mask)")
    p.add_argument("--augment", type=int, default=None,
                   help="with --masks: deformations per mask (default: sample.augment.n)")


def _sample(a: argparse.Namespace, cfg: dict[str, Any]) -> None:
    from cardigan.synth.sample import run_sample

    sample_cfg = dict(cfg["sample"])
    if a.masks is None:
        if a.styles is not None or a.augment is not None:
            raise ValueError("--styles and --augment go with --masks; set sample.samples_per_mask "
                             "or sample.augment.n with --set for the workflow's sampling")
    else:
        from cardigan.synth.generate import sample_settings, write_from_masks

        if not Path(a.masks).exists():
            raise ValueError(f"--masks {a.masks} does not exist")
        sample_cfg = sample_settings(sample_cfg, styles=a.styles, augment=a.augment)
        summary = write_from_masks(a.generator, a.masks, a.out, sample_cfg, a.threads)
        print(f"{summary['images']} images from {summary['sources']} masks written to {a.out}")
        return

    views = cfg["data"]["views"]
    annos = layout.extracted(cfg["sample"]["mask_splits"], views, images=False, data_dir=a.data_dir)
    real = layout.extracted(["train"], views, images=False, data_dir=a.data_dir)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    run_sample(a.generator, annos, real, cfg["sample"], a.out, threads=a.threads)


def _export_args(p: argparse.ArgumentParser) -> None:
    _data_dir_arg(p)
    p.add_argument("--samples", default=layout.SAMPLES, help=f"default: {layout.SAMPLES}")
    p.add_argument("--generator", default=layout.GENERATOR, help=f"default: {layout.GENERATOR}")
    p.add_argument("--out-dir", default=layout.EXPORT_DIR, help=f"default: {layout.EXPORT_DIR}")


def _export(a: argparse.Namespace, cfg: dict[str, Any]) -> None:
    from cardigan.export.nnunet import run_nnunet
    from cardigan.export.provenance import provenance
    from cardigan.export.stage import run_export

    views = cfg["data"]["views"]
    outputs = layout.export_outputs(cfg["export"], a.out_dir)
    Path(a.out_dir).mkdir(parents=True, exist_ok=True)
    run_export(a.samples, a.generator,
               layout.extracted(["train"], views, annos=False, data_dir=a.data_dir),
               layout.extracted(["train"], views, images=False, data_dir=a.data_dir),
               provenance(cfg), outputs)
    if "nnunet" in outputs:
        run_nnunet(outputs["h5"], outputs["nnunet"], outputs["datalist"], cfg["export"]["nnunet"],
                   layout.extracted(["test"], views, annos=False, data_dir=a.data_dir),
                   layout.extracted(["test"], views, images=False, data_dir=a.data_dir))


def _evaluate_args(p: argparse.ArgumentParser) -> None:
    _data_dir_arg(p)
    p.add_argument("--synthetic", default=layout.SYNTHETIC, help=f"default: {layout.SYNTHETIC}")
    p.add_argument("--out-dir", default=layout.EVALUATE_DIR, help=f"default: {layout.EVALUATE_DIR}")


def _evaluate(a: argparse.Namespace, cfg: dict[str, Any]) -> None:
    from cardigan.evaluate import run_evaluate

    out = layout.evaluate_outputs(a.out_dir)
    Path(a.out_dir).mkdir(parents=True, exist_ok=True)
    run_evaluate(a.synthetic, a.data_dir, cfg["data"]["views"], cfg["evaluate"],
                 cfg["data"]["source"], out["metrics"], out["dice"], out["summary"],
                 out["worst"], threads=a.threads)


Stage = tuple[str, Callable[[argparse.ArgumentParser], None],
              Callable[[argparse.Namespace, dict[str, Any]], None]]
#: name -> (one-line help, add arguments, run)
SUBCOMMANDS: dict[str, Stage] = {
    "phantom": ("write the CAMUS-like phantom (config: phantom)", _phantom_args, _phantom),
    "extract": ("CAMUS or the phantom -> per-split HDF5 files (config: data)", _extract_args, _extract),
    "train": ("train the SPADE GAN on the train split (config: train)", _train_args, _train),
    "sample": ("the generator on real and deformed masks (config: sample)", _sample_args, _sample),
    "export": ("synthetic.h5, nnU-Net dataset, preview, card (config: export)", _export_args, _export),
    "evaluate": ("U-Nets on real, synthetic, mixed (or finetuned) data (config: evaluate)",
                 _evaluate_args, _evaluate),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cardigan",
        description="Run one cardiGAN stage outside Snakemake (the whole pipeline: snakemake).",
        epilog="Each subcommand reads ./config.yaml (or --config FILE) with --set overrides; "
        "`cardigan STAGE --help` lists its options.",
    )
    parser.add_argument("--version", action="version", version=f"cardigan {__version__}")
    sub = parser.add_subparsers(dest="stage", metavar="STAGE", required=True)
    for name, (help_line, add_args, _) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_line, description=help_line[0].upper() + help_line[1:]
                           + ".")
        p.add_argument("--config", default=None,
                       help=f"cardiGAN config YAML (default: ./{DEFAULT_CONFIG} when present, "
                       "else the built-in defaults)")
        p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                       help="override one config value, e.g. --set train.epochs=300 (repeatable)")
        p.add_argument("--threads", type=int, default=1, help="CPU threads (default: 1)")
        add_args(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    run = SUBCOMMANDS[args.stage][2]
    try:
        run(args, _config(args))
    except (ConfigError, *USER_ERRORS) as err:
        message = " ".join(str(err).split()) or type(err).__name__
        print(f"cardigan {args.stage}: error: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"cardigan {args.stage}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
