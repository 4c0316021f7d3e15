"""Config validation: defaults, one-line errors naming the key, semantic checks, hashing."""

from __future__ import annotations

import copy
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cardigan.core.config import ConfigError, config_hash, validate

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"


@pytest.fixture()
def cfg() -> dict:
    return yaml.safe_load((ROOT / "config.yaml").read_text())


def test_default_config_is_valid_and_complete(cfg):
    before = copy.deepcopy(cfg)
    validate(cfg, SCHEMA)
    assert cfg == before, "config.yaml should spell out every key the schema defines"


def test_defaults_are_filled_into_a_sparse_config():
    cfg = validate({"data": {"image_size": 64}}, SCHEMA)
    assert cfg["data"]["views"] == ["4CH"]
    assert cfg["data"]["instants"] == ["ED", "ES"]
    assert cfg["phantom"] == {"patients": 50, "seed": 0, "valid_patients": None, "test_patients": None,
                              "quality_shares": {"Good": 0.35, "Medium": 0.40, "Poor": 0.25}}
    assert cfg["train"]["lr_G"] == pytest.approx(2e-4)
    assert cfg["train"]["lr_D"] == pytest.approx(2e-4)
    assert cfg["train"]["beta1"] == pytest.approx(0.5)
    assert cfg["sample"]["augment"]["max_tries"] == 20
    assert cfg["export"]["nnunet"]["dataset_id"] == 501


@pytest.mark.parametrize(
    ("patch", "needle"),
    [
        ({"data": {"views": ["3CH"]}}, "data.views[0]"),
        ({"data": {"image_size": "big"}}, "data.image_size"),
        ({"data": {"source": "ukbb"}}, "data.source"),
        ({"data": {"instants": []}}, "data.instants"),
        ({"train": {"epochs": 0}}, "train.epochs"),
        ({"train": {"ngff": 3}}, "unknown key"),
        ({"sample": {"augment": {"rotation_deg": 90}}}, "sample.augment.rotation_deg"),
        ({"export": {"formats": ["png"]}}, "export.formats[0]"),
        ({"evaluate": {"settings": ["both"]}}, "evaluate.settings[0]"),
        ({"phantom": {"quality_shares": {"Poor": 1.5}}}, "phantom.quality_shares.Poor"),
        ({"phantom": {"quality_shares": {"Bad": 0.5}}}, "unknown key"),
    ],
)
def test_schema_errors_name_the_key(patch, needle):
    with pytest.raises(ConfigError) as err:
        validate(patch, SCHEMA)
    msg = str(err.value)
    assert needle in msg
    assert "\n" not in msg


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match=r"config key train: .*'ngff'"):
        validate({"train": {"ngff": 3}}, SCHEMA)


@pytest.mark.parametrize(
    ("patch", "needle"),
    [
        ({"data": {"source": "camus"}}, "data.camus_path: required"),
        ({"data": {"source": "camus", "camus_path": "/no/such/CAMUS"}}, "/no/such/CAMUS does not exist"),
        ({"data": {"split": "/no/such/folder"}}, "data.split"),
        ({"data": {"image_size": 100}}, "data.image_size: 100 is not divisible"),
        ({"train": {"perceptual_weights": "/no/vgg19.pth"}}, "train.perceptual_weights"),
        ({"train": {"use_vae": False, "texture_noise": False}, "sample": {"samples_per_mask": 3}},
         "sample.samples_per_mask"),
        ({"train": {"noise_dim": 4}}, "train.use_vae and train.noise_dim"),
        ({"train": {"discriminator": "oasis", "r1_gamma": 1.0}},
         "train.r1_gamma: the R1 penalty is for the patchgan discriminator"),
        ({"sample": {"samples_per_mask": 2, "own_styles": 3}},
         "sample.own_styles: 3 is more than sample.samples_per_mask (2)"),
        ({"sample": {"augment": {"scale": [1.2, 0.8]}}}, "sample.augment.scale"),
        ({"phantom": {"quality_shares": {"Poor": 0.6}}},
         "config key phantom.quality_shares must sum to 1, got 1.35 (Good 0.35, Medium 0.4, Poor 0.6)"),
        ({"evaluate": {"inception_weights": "/no/inception.pth"}}, "evaluate.inception_weights"),
        ({"export": {"formats": ["h5", "nnunet"], "nnunet": {"test_split": True}},
          "sample": {"mask_splits": ["train", "test"]}}, "export.nnunet.test_split"),
        ({"label_budget": {"patients": [5]}}, "label_budget.patients: the label-budget curve"),
        ({"label_budget": {"patients": [5]}, "evaluate": {
            "enabled": False, "settings": ["real", "synthetic", "mixed", "finetuned"]}},
         "evaluate.enabled: true"),
        ({"evaluate": {"settings": ["real", "finetuned"], "iterations": 1}},
         "evaluate.iterations: 1; the finetuned setting"),
    ],
)
def test_semantic_errors_name_the_key(patch, needle):
    with pytest.raises(ConfigError, match=None) as err:
        validate(patch, SCHEMA)
    assert needle in str(err.value)


def test_split_folder_must_hold_the_three_files(tmp_path):
    (tmp_path / "subgroup_training.txt").write_text("patient0001\n")
    with pytest.raises(ConfigError, match="subgroup_validation.txt"):
        validate({"data": {"split": str(tmp_path)}}, SCHEMA)
    for name in ("validation", "testing"):
        (tmp_path / f"subgroup_{name}.txt").write_text("patient0002\n")
    assert validate({"data": {"split": str(tmp_path)}}, SCHEMA)["data"]["split"] == str(tmp_path)


def test_vae_allows_several_samples_per_mask():
    cfg = validate({"train": {"use_vae": True}, "sample": {"samples_per_mask": 4}}, SCHEMA)
    assert cfg["sample"]["samples_per_mask"] == 4


def test_config_hash_ignores_key_order_but_not_values():
    a = {"x": 1, "y": {"b": 2, "a": [1, 2]}}
    b = {"y": {"a": [1, 2], "b": 2}, "x": 1}
    assert config_hash(a) == config_hash(b)
    assert config_hash(a) != config_hash({**a, "x": 2})


@pytest.mark.skipif(shutil.which("snakemake") is None, reason="snakemake not on PATH")
def test_snakemake_stops_before_any_job_with_one_clear_message(tmp_path):
    for name in ("Snakefile", "config.yaml"):
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copytree(ROOT / "workflow", tmp_path / "workflow")
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--cores", "1", "--config", "data={views: [3CH]}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "config key data.views[0]: '3CH' is not one of ['2CH', '4CH']" in out
    assert not (tmp_path / "results").exists()


# Snakemake reads `--config 'train={epochs: 300}'` with every nested scalar a string.
def test_command_line_strings_become_the_types_the_schema_expects():
    cfg = validate({
        "data": {"image_size": "64", "camus_path": "~"},
        "train": {"epochs": "300", "lr_G": "2e-4", "amp": "false", "use_vae": "True",
                  "perceptual_weights": "null"},
        "sample": {"samples_per_mask": "2", "augment": {"scale": ["0.9", "1.1"], "n": "0"}},
        "evaluate": {"enabled": "no", "channels": ["4", "8"]},
    }, SCHEMA)
    assert cfg["data"]["image_size"] == 64 and cfg["data"]["camus_path"] is None
    assert cfg["train"]["epochs"] == 300 and isinstance(cfg["train"]["epochs"], int)
    assert cfg["train"]["lr_G"] == pytest.approx(2e-4)
    assert cfg["train"]["amp"] is False and cfg["train"]["use_vae"] is True
    assert cfg["train"]["perceptual_weights"] is None
    assert cfg["sample"]["augment"]["scale"] == [0.9, 1.1]
    assert cfg["sample"]["augment"]["n"] == 0 and cfg["sample"]["samples_per_mask"] == 2
    assert cfg["evaluate"]["enabled"] is False and cfg["evaluate"]["channels"] == [4, 8]
    # Strings stay strings where the schema wants one.
    assert validate({"export": {"nnunet": {"name": "42"}}}, SCHEMA)[
        "export"]["nnunet"]["name"] == "42"


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"train": {"epochs": "3x"}}, "config key train.epochs: '3x' is not an integer"),
        ({"train": {"epochs": "2.5"}}, "config key train.epochs: '2.5' is not an integer"),
        ({"train": {"lr_G": "fast"}}, "config key train.lr_G: 'fast' is not a number"),
        ({"evaluate": {"enabled": "maybe"}}, "config key evaluate.enabled: 'maybe' is not a boolean"),
        ({"sample": {"augment": {"scale": ["a", "1"]}}},
         "config key sample.augment.scale[0]: 'a' is not a number"),
    ],
)
def test_a_string_that_does_not_convert_is_refused_naming_key_value_and_type(patch, message):
    with pytest.raises(ConfigError) as err:
        validate(patch, SCHEMA)
    assert str(err.value) == message


def test_renamed_values_still_work_with_a_warning(caplog):
    with caplog.at_level("WARNING", logger="cardigan"):
        cfg = validate({"data": {"format": "seed_h5", "split": "seed"}})
    assert cfg["data"]["format"] == "legacy_h5" and cfg["data"]["split"] == "patient_order"
    assert "data.format: 'seed_h5' is deprecated, use 'legacy_h5'" in caplog.text
    assert "data.split: 'seed' is deprecated, use 'patient_order'" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="cardigan"):
        validate({"data": {"format": "legacy_h5", "split": "patient_order"}})
    assert "deprecated" not in caplog.text
