"""The conda environment files list exactly the package's runtime dependencies."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import tomllib
import yaml

ROOT = Path(__file__).resolve().parents[1]
ENV_FILES = sorted((ROOT / "envs").glob("*.yaml"))
#: Conda packages that are the environment's plumbing, not dependencies of the package.
PLUMBING = {"python", "pip"}
#: PyPI name -> conda-forge name, where they differ beyond case and -/_/.
CONDA_NAME = {"torch": "pytorch"}


def normalise(name: str) -> str:
    name = re.split(r"[\s<>=!~;\[]", name.split("::")[-1].strip(), maxsplit=1)[0]
    name = re.sub(r"[-_.]+", "-", name).lower()
    return CONDA_NAME.get(name, name)


def pyproject_deps() -> set[str]:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return {normalise(d) for d in tomllib.load(f)["project"]["dependencies"]}


def env_deps(path: Path) -> set[str]:
    spec = yaml.safe_load(path.read_text())
    if not isinstance(spec, dict) or not isinstance(spec.get("dependencies"), list):
        raise AssertionError(f"{path.name}: no 'dependencies' list")
    names = set()
    for dep in spec["dependencies"]:
        items = dep.get("pip", []) if isinstance(dep, dict) else [dep]
        names |= {normalise(str(d)) for d in items if not str(d).startswith("-")}
    return names - PLUMBING


def test_normalise():
    assert normalise("torch>=2.2,<3") == "pytorch"
    assert normalise("SimpleITK>=2.3") == "simpleitk"
    assert normalise("conda-forge::scikit_image =0.22") == "scikit-image"
    assert normalise("snakemake-executor-plugin-slurm") == "snakemake-executor-plugin-slurm"


def test_there_are_env_files():
    assert ENV_FILES, "no envs/*.yaml"


@pytest.mark.parametrize("path", ENV_FILES, ids=lambda p: p.name)
def test_env_matches_pyproject(path):
    want, have = pyproject_deps(), env_deps(path)
    missing, extra = sorted(want - have), sorted(have - want)
    assert not missing and not extra, (
        f"envs/{path.name} and pyproject.toml [project] dependencies differ: "
        f"missing from the env: {missing or 'none'}; not in pyproject.toml: {extra or 'none'}")


@pytest.mark.parametrize("path", ENV_FILES, ids=lambda p: p.name)
def test_env_channels(path):
    spec = yaml.safe_load(path.read_text())
    assert spec["channels"][0] == "conda-forge"
    assert "defaults" not in spec["channels"]
