# Config validation and the input/target helpers every rule file uses.
from pathlib import Path

from snakemake.exceptions import WorkflowError

try:
    from cardigan.config import ConfigError, config_hash, validate
except ImportError as err:
    raise WorkflowError(
        "the cardigan package is not importable: install it first (pip install -e .), "
        f"see README.md ({err})"
    )


try:
    validate(
        config, Path(workflow.current_basedir).parent / "schemas" / "config.schema.yaml"
    )
except ConfigError as err:
    raise WorkflowError(str(err))


wildcard_constraints:
    split="train|valid|test",
    view="2CH|4CH",


SPLITS = ["train", "valid", "test"]
VIEWS = config["data"]["views"]
PHANTOM_DIR = "results/phantom/CAMUS_public"
DATA_DIR = "results/data"


def camus_input():
    """What extract reads: the phantom folder, or the user's CAMUS download."""
    if config["data"]["source"] == "phantom":
        return PHANTOM_DIR
    return config["data"]["camus_path"]


def extracted(splits, views=None, anno=True, images=True):
    """Paths of the extracted per-split/view HDF5 files."""
    views = VIEWS if views is None else views
    out = []
    if images:
        out += expand(f"{DATA_DIR}/{{split}}_{{view}}.h5", split=splits, view=views)
    if anno:
        out += expand(
            f"{DATA_DIR}/anno_{{split}}_{{view}}.h5", split=splits, view=views
        )
    return out


def uses_gpu(section):
    """GPUs a stage asks the scheduler for: none when it is pinned to the CPU."""
    if config[section].get("device", "auto") == "cpu":
        return 0
    return config[section].get("gpus", 1)


def provenance_config():
    """The config sections that determine the synthetic dataset (evaluate excluded)."""
    return {k: config[k] for k in ("data", "phantom", "train", "sample", "export")}


def export_outputs():
    out = {
        "h5": "results/export/synthetic.h5",
        "preview": "results/export/preview.png",
        "card": "results/export/dataset_card.md",
    }
    if "nnunet" in config["export"]["formats"]:
        nn = config["export"]["nnunet"]
        out["nnunet"] = (
            f"results/export/nnunet/Dataset{nn['dataset_id']:03d}_{nn['name']}"
        )
        out["datalist"] = "results/export/datalist.json"
    return out


def export_test_split(**kind):
    """The real test split's files, which the nnU-Net export writes as imagesTs/labelsTs."""
    nn = config["export"]["nnunet"]
    if "nnunet" in config["export"]["formats"] and nn["test_split"]:
        return extracted(["test"], **kind)
    return []


def evaluate_outputs():
    return {
        "metrics": "results/evaluate/metrics.csv",
        "dice": "results/evaluate/dice.png",
        "summary": "results/evaluate/summary.md",
    }


def stage_targets():
    """Every declared output of the enabled stages (what the manifest lists)."""
    targets = [PHANTOM_DIR] if config["data"]["source"] == "phantom" else []
    targets += extracted(SPLITS) + [f"{DATA_DIR}/metadata.csv"]
    targets += expand(f"{DATA_DIR}/preview_{{split}}.png", split=SPLITS)
    targets += [
        "results/train/generator.pt",
        "results/train/config.json",
        "results/train/train_log.csv",
        "results/train/losses.png",
        "results/train/samples",
        "results/sample/samples.h5",
    ]
    targets += list(export_outputs().values())
    if config["evaluate"]["enabled"]:
        targets += list(evaluate_outputs().values())
    return targets


def all_targets():
    return stage_targets() + ["results/manifest.tsv"]
