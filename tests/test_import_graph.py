"""The package's imports run one way: core, then the stages in pipeline order, then the entry
points; no module imports a later stage, and no import cycle exists. Every import counts: those
inside functions and those only for type checking too."""

from __future__ import annotations

import ast
from pathlib import Path

import cardigan

ROOT = Path(cardigan.__file__).parent
#: The subpackages in the order the pipeline runs them; a module may import its own stage and
#: earlier ones. Top-level modules (the CLI, the public facades) may import any stage.
STAGES = ("core", "phantom", "data", "gan", "synth", "export", "evaluate", "label_budget")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """The cardigan modules that ``path`` names in an import statement, resolved to modules that
    exist (``from cardigan.core import layout`` names ``cardigan.core.layout``)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            found |= {f"{target}.{a.name}" for a in node.names}
    return {m for m in found if m.split(".")[0] == "cardigan" and _exists(m)}


def _exists(module: str) -> bool:
    path = ROOT.parent.joinpath(*module.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def graph() -> dict[str, set[str]]:
    """module -> the modules it imports; a package a module lies in is not counted (Python has
    begun importing it before the module)."""
    g = {module_name(p): imports(p) for p in sorted(ROOT.rglob("*.py"))}
    return {m: {t for t in ts if not (m == t or m.startswith(t + "."))} for m, ts in g.items()}


def stage(module: str) -> int:
    parts = module.split(".")
    if module == "cardigan":
        return 0  # the package root holds the version and imports no stage
    if len(parts) > 2 or (len(parts) == 2 and parts[1] in STAGES):
        return STAGES.index(parts[1]) if parts[1] in STAGES else len(STAGES)
    return len(STAGES)  # cardigan, cardigan.cli, cardigan.dataset, ...


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(g.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def test_every_stage_is_a_subpackage():
    for name in STAGES:
        assert (ROOT / name / "__init__.py").is_file(), name


def test_no_import_from_a_later_stage():
    later = sorted(f"{m} -> {t}" for m, targets in graph().items() for t in targets
                   if stage(t) > stage(m))
    assert not later, "imports from a later stage:\n" + "\n".join(later)


def test_no_import_cycle():
    g = graph()
    # a package's __init__ runs before its modules: importing cardigan.x.y imports cardigan.x
    for m in list(g):
        for t in list(g[m]):
            parent = t.rpartition(".")[0]
            if parent and not (parent == m or m.startswith(parent + ".")):
                g[m].add(parent)
    assert not cycles(g), cycles(g)


def test_the_checks_catch_what_they_look_for():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert stage("cardigan.gan.train") > stage("cardigan.data.masks") > stage("cardigan.core")
    assert stage("cardigan.cli") == len(STAGES)
    gan = ROOT / "gan" / "train.py"
    assert "cardigan.gan.train_config" in imports(gan)
