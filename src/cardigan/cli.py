"""``cardigan`` command: run one stage outside Snakemake (the pipeline itself is the Snakefile).

    cardigan phantom OUT --patients 50 --seed 0
    cardigan extract SRC OUT --image-size 256 ...
    cardigan train ... / cardigan sample ... / cardigan export ... / cardigan evaluate ...

Each sub-command forwards its arguments to the stage module's ``main`` (``--help`` there).
"""

from __future__ import annotations

import importlib
import sys

from . import __version__

STAGES = {
    "phantom": "cardigan.phantom",
    "extract": "cardigan.extract",
    "train": "cardigan.train",
    "sample": "cardigan.sample",
    "export": "cardigan.export",
    "evaluate": "cardigan.evaluate",
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        print("\nstages: " + ", ".join(STAGES))
        return 0
    if argv[0] == "--version":
        print(f"cardigan {__version__}")
        return 0
    stage, rest = argv[0], argv[1:]
    if stage not in STAGES:
        print(f"cardigan: unknown stage {stage!r}; choose from {', '.join(STAGES)}", file=sys.stderr)
        return 2
    module = importlib.import_module(STAGES[stage])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
