"""Fingerprints of the package code a stage runs, so that changed code re-runs its stages.

Snakemake re-runs a rule when its script changes but cannot see the ``cardigan`` modules the
script imports. :func:`code_fingerprint` follows the imports (read from the source, nothing is
imported) from a stage's entry points through every ``cardigan`` module they reach, and hashes
the contents of those files. The workflow passes the result to each rule as a param, so after a
``git pull`` exactly the stages whose code changed run again; a file that is only touched
(same content) changes nothing.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

PACKAGE = "cardigan"
#: Files that make up the package: its code and the schema it ships.
PACKAGE_SUFFIXES = (".py", ".yaml")


def package_root() -> Path:
    """The folder of the ``cardigan`` package that Python imports (installed or PYTHONPATH)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"the {PACKAGE} package is not importable")
    return Path(next(iter(spec.submodule_search_locations)))


def _module_file(name: str, root: Path) -> Path | None:
    """File of module ``name`` (``cardigan.x.y``) under ``root``, or None when there is none."""
    parts = name.split(".")[1:]
    base = root.joinpath(*parts)
    for candidate in (base.with_suffix(".py") if parts else None, base / "__init__.py"):
        if candidate is not None and candidate.is_file():
            return candidate
    return None


def _module_name(path: Path, root: Path) -> str:
    rel = path.relative_to(root).with_suffix("")
    parts = [p for p in rel.parts if p != "__init__"]
    return ".".join([PACKAGE, *parts])


def _imported(tree: ast.AST, module: str | None, is_package: bool) -> set[str]:
    """``cardigan`` modules named by the imports in ``tree`` (a module's, or a script's with
    ``module`` None), anywhere in it: function-level imports count too."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == PACKAGE}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                if module is None:
                    continue
                base = module.split(".")
                if not is_package:
                    base = base[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != PACKAGE:
                continue
            found.add(target)
            # `from pkg import sub` may name a submodule
            found |= {f"{target}.{a.name}" for a in node.names}
    # A module's parent packages run first on import.
    for name in list(found):
        parts = name.split(".")
        found |= {".".join(parts[:i]) for i in range(1, len(parts))}
    return found


def module_closure(entries: Iterable[str | Path], root: Path | None = None) -> list[Path]:
    """Every ``cardigan`` source file reached from ``entries``: module names (``cardigan.gan.train``)
    or paths of scripts that import from the package. Sorted."""
    root = package_root() if root is None else Path(root)
    todo: list[str] = []
    for entry in entries:
        if isinstance(entry, Path) or str(entry).endswith(".py"):
            tree = ast.parse(Path(entry).read_text(), filename=str(entry))
            todo += sorted(_imported(tree, None, False))
        else:
            todo.append(str(entry))
    seen: dict[str, Path] = {}
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        path = _module_file(name, root)
        if path is None:
            continue  # `from cardigan.x import function`: the function, not a module
        seen[name] = path
        tree = ast.parse(path.read_text(), filename=str(path))
        todo += sorted(_imported(tree, name, path.name == "__init__.py") - seen.keys())
    return sorted(set(seen.values()))


@lru_cache(maxsize=None)
def _fingerprint(entries: tuple[str, ...], root: str) -> str:
    h = hashlib.sha256()
    for path in module_closure(entries, Path(root)):
        h.update(path.relative_to(root).as_posix().encode() + b"\0")
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


def code_fingerprint(*entries: str | Path) -> str:
    """sha256 over the contents (not timestamps) of every package file ``entries`` reach."""
    root = package_root()
    return _fingerprint(tuple(str(e) for e in entries), str(root))


def _package_files(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).digest()
        for p in root.rglob("*")
        if p.suffix in PACKAGE_SUFFIXES and "__pycache__" not in p.parts and p.is_file()
    }


def differing_files(a: str | Path, b: str | Path) -> list[str]:
    """Package files (code and schema, paths relative to the package folder) whose contents
    differ between package folders ``a`` and ``b``, or that only one of them has. Sorted.
    One folder twice (an editable install, checked at every workflow parse) reads nothing."""
    a, b = Path(a).resolve(), Path(b).resolve()
    if a == b:
        return []
    fa, fb = _package_files(a), _package_files(b)
    return sorted(name for name in fa.keys() | fb.keys() if fa.get(name) != fb.get(name))
