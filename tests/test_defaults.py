"""One home for defaults: the schema's. Nothing else may disagree with it."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import re
from pathlib import Path

import pytest
import yaml

from cardigan.core.defaults import load_schema, schema_defaults
from cardigan.data.extract import extract
from cardigan.gan.model_config import ModelConfig
from cardigan.gan.train_config import TrainConfig
from cardigan.phantom.write import write_phantom
from cardigan.synth.deform import AugmentConfig

ROOT = Path(__file__).resolve().parents[1]


def _properties(schema, path=()):
    """(key path, property schema) of every key in the schema, sections included."""
    for name, sub in schema.get("properties", {}).items():
        yield (*path, name), sub
        yield from _properties(sub, (*path, name))


def test_every_schema_key_has_a_description():
    missing = [".".join(p) for p, sub in _properties(load_schema()) if not sub.get("description")]
    assert missing == []


def _leaves(d, path=()):
    for k, v in d.items():
        if isinstance(v, dict) and v:
            yield from _leaves(v, (*path, k))
        else:
            yield (*path, k), v


def test_config_yaml_differs_from_the_schema_only_where_a_comment_says_so():
    text = (ROOT / "config.yaml").read_text()
    config = dict(_leaves(yaml.safe_load(text)))
    defaults = dict(_leaves(schema_defaults()))
    assert config.keys() == defaults.keys(), "config.yaml should spell out every key"
    lines = text.splitlines()
    for key, value in config.items():
        if value != defaults[key]:
            line = next(ln for ln in lines if re.match(rf"\s*{key[-1]}:", ln))
            assert "schema default" in line, (
                f"config.yaml sets {'.'.join(key)}: {value!r} but the schema default is "
                f"{defaults[key]!r}; say why in a comment naming the schema default")


@pytest.mark.parametrize(
    ("cls", "section", "renamed"),
    [
        (AugmentConfig, ("sample", "augment"), {}),
        (ModelConfig, ("train",), {"image_size": ("data", "image_size")}),
    ],
)
def test_stage_dataclasses_take_the_schema_defaults(cls, section, renamed):
    defaults = schema_defaults()
    sec = defaults
    for part in section:
        sec = sec[part]
    for f in dataclasses.fields(cls):
        where = renamed.get(f.name, (*section, f.name))
        expected = defaults
        for part in where:
            expected = expected[part]
        value = f.default
        assert (list(value) if isinstance(value, tuple) else value) == expected, (cls, f.name)
    if cls is not ModelConfig:  # ModelConfig holds only the network's keys
        assert {f.name for f in dataclasses.fields(cls)} == set(sec)


def test_stage_function_defaults_are_the_schemas():
    d = schema_defaults()
    ext = inspect.signature(extract).parameters
    assert ext["fmt"].default == d["data"]["format"]
    for key in ("views", "instants", "image_size", "split"):
        value = ext[key].default
        assert (list(value) if isinstance(value, tuple) else value) == d["data"][key], key
    ph = inspect.signature(write_phantom).parameters
    assert ph["patients"].default == d["phantom"]["patients"]
    assert ph["seed"].default == d["phantom"]["seed"]


def _code_files():
    yield from (ROOT / "src" / "cardigan").rglob("*.py")
    yield from (ROOT / "workflow" / "scripts").glob("*.py")


def test_no_stage_code_falls_back_to_its_own_default_for_a_config_key():
    keys = {p[-1] for p, sub in _properties(load_schema()) if "properties" not in sub}
    found = []
    for path in _code_files():
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "get" and len(node.args) == 2
                    and isinstance(node.args[0], ast.Constant) and node.args[0].value in keys):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} .get({node.args[0].value!r}, ...)")
    smk = (ROOT / "workflow" / "rules").glob("*.smk")
    for path in smk:
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"\.get\(\"\w+\", ", line):
                found.append(f"{path.relative_to(ROOT)}:{n}")
    assert found == []


def test_train_config_is_the_schema_section():
    """TrainConfig declares no defaults of its own: built from nothing it is the schema's section,
    in its order, and it rejects what the schema rejects."""
    assert list(TrainConfig.from_dict().to_dict().items()) == \
        list(schema_defaults()["train"].items())
    with pytest.raises(ValueError, match="train.lr_G"):
        TrainConfig.from_dict({"lr_G": "fast"})
    with pytest.raises(ValueError, match="unknown train setting"):
        TrainConfig.from_dict({"learning_rate": 1e-4})
