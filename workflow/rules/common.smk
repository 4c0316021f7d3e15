# Config validation, the paths of every output (from cardigan.core.layout) and the helpers every rule
# file uses.
import importlib.util
import os
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError

# A Snakemake whose Python does not have cardigan installed (a system or pyenv one, first on
# PATH) uses this checkout's own package, in this process and in every job it starts; an
# installed cardigan is used first (and must hold the same code: below).
CHECKOUT_SRC = Path(workflow.current_basedir).parents[1] / "src"
if (
    importlib.util.find_spec("cardigan") is None
    and (CHECKOUT_SRC / "cardigan").is_dir()
):
    sys.path.insert(0, str(CHECKOUT_SRC))
    os.environ.update(
        PYTHONPATH=os.pathsep.join(
            p for p in (str(CHECKOUT_SRC), os.environ.get("PYTHONPATH")) if p
        )
    )

try:
    from cardigan.core import layout
    from cardigan.core.code_fingerprint import (
        code_fingerprint,
        differing_files,
        package_root,
    )
    from cardigan.core.config import ConfigError, config_hash, validate
    from cardigan.export.provenance import provenance
except ImportError as err:
    FOUND = importlib.util.find_spec("cardigan")
    if FOUND is None:
        raise WorkflowError(
            f"the cardigan package is not importable by {sys.executable}, nor from {CHECKOUT_SRC}: "
            f"install it in this Python (pip install -e .), see README.md ({err})"
        )
    raise WorkflowError(
        f"{sys.executable} imports cardigan from {list(FOUND.submodule_search_locations)[0]}, "
        f"another version than this workflow's ({err}): install this checkout's package in "
        f"that Python (pip install -e .), see README.md"
    )

# An installed copy that is not this checkout's (`pip install .` before a `git pull` or an
# edit) would run other code than the checkout holds, and its stages would not re-run.
if (CHECKOUT_SRC / "cardigan").is_dir():
    STALE = differing_files(package_root(), CHECKOUT_SRC / "cardigan")
    if STALE:
        raise WorkflowError(
            f"{sys.executable} imports cardigan from {package_root()}, which is not this "
            f"checkout's {CHECKOUT_SRC / 'cardigan'}: {len(STALE)} file(s) differ "
            f"({', '.join(STALE[:5])}{', ...' if len(STALE) > 5 else ''}). Install this "
            f"checkout's package in that Python: pip install -e {CHECKOUT_SRC.parent}"
        )


try:
    validate(
        config, Path(workflow.current_basedir).parent / "schemas" / "config.schema.yaml"
    )
except ConfigError as err:
    raise WorkflowError(str(err))


SPLITS = list(layout.SPLITS)
VIEWS = config["data"]["views"]
SCRIPTS = Path(workflow.current_basedir).parent / "scripts"


def camus_input():
    """What extract reads: the phantom folder, or the user's CAMUS download."""
    if config["data"]["source"] == "phantom":
        return layout.PHANTOM_DIR
    return config["data"]["camus_path"]


def extracted(splits, views=None, anno=True, images=True):
    """Paths of the extracted per-split/view HDF5 files."""
    views = VIEWS if views is None else views
    return layout.extracted(splits, views, images=images, annos=anno)


def user_masks():
    """The files under sample.mask_path: inputs of sample, so that editing them re-runs it."""
    path = config["sample"]["mask_path"]
    if not path:
        return []
    if Path(path).is_dir():
        return sorted(
            str(p)
            for p in Path(path).rglob("*")
            if p.is_file() and not p.name.startswith(".")
        )
    return [path]


def code(stage):
    """Fingerprint of the cardigan code the stage's script runs (a param: code edits re-run the
    stage, a touch does not)."""
    return code_fingerprint(SCRIPTS / f"{stage}.py")


def uses_gpu(section):
    """GPUs a stage asks the scheduler for: none when it is pinned to the CPU."""
    if config[section]["device"] == "cpu":
        return 0
    return config[section]["gpus"] if "gpus" in config[section] else 1


def provenance_config():
    """The config that determines the synthetic dataset (not evaluate, not the nnU-Net export)."""
    return provenance(config)


def export_outputs():
    return layout.export_outputs(config["export"])


def export_test_split(**kind):
    """The real test split's files, which the nnU-Net export writes as imagesTs/labelsTs."""
    nn = config["export"]["nnunet"]
    if "nnunet" in config["export"]["formats"] and nn["test_split"]:
        return extracted(["test"], **kind)
    return []


def evaluate_outputs():
    return layout.evaluate_outputs()


# The label-budget curve (section label_budget): one folder per budget, keyed by its patient
# count; the full train split is the last point: the default run's GAN, samples and evaluation.
BUDGETS = [str(b) for b in sorted(config["label_budget"]["patients"])]


def budget_extracted(budget, **kind):
    """A budget's train subset, as extracted HDF5 files of its own."""
    return layout.extracted(
        ["train"], VIEWS, data_dir=layout.budget_data_dir(budget), **kind
    )


def budget_train_outputs(budget):
    return layout.train_outputs(layout.budget_train_dir(budget))


def budget_evaluate_outputs(budget):
    return layout.evaluate_outputs(layout.budget_evaluate_dir(budget))


def label_budget_metrics():
    """metrics.csv of every point of the curve, the full split (the main evaluation) last."""
    return [budget_evaluate_outputs(b)["metrics"] for b in BUDGETS] + [
        evaluate_outputs()["metrics"]
    ]
