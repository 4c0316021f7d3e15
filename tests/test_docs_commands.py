"""The documentation is executable: every ``snakemake …`` and ``cardigan …`` command shown in a
code block (fenced, indented or inline) of README.md or docs/*.md runs.

Each command runs in its own copy of one complete tiny run, whose ``config.yaml`` is the tiny
config merged in (so commands run on the tiny config): Snakemake commands as a dry run (``-n``;
``--report``, ``--lint`` and ``--unlock`` for real), ``cardigan`` commands for real. A path to
the user's CAMUS download is replaced by the run's phantom folder (a 2023-layout tree, which
``data.source: camus`` reads like a download).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from snakemake.utils import update_config
from workflow_helpers import REPO, TINY, clone, completed_run

pytestmark = pytest.mark.slow

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
PROGRAMS = ("snakemake", "cardigan")
CAMUS_PLACEHOLDER = re.compile(r"(/data/CAMUS(_public)?|/path/to/CAMUS)\b")
NOT_DRY = ("--report", "--lint", "--unlock", "-n", "--dry-run")


def _logical_lines(lines: list[str]) -> list[str]:
    out, buf = [], ""
    for line in lines:
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1] + " "
            continue
        out.append(buf + line)
        buf = ""
    return out


def documented_commands() -> list[tuple[str, str]]:
    """``(where, command)`` for each snakemake/cardigan command in a fenced or indented code
    block (shell ``&&`` chains split; comments dropped)."""
    found = []
    for doc in DOCS:
        fenced, block = False, []
        lines = doc.read_text().splitlines()
        code = []
        for n, line in enumerate(lines, 1):
            if line.lstrip().startswith("```"):
                fenced = not fenced
                lang = line.strip()[3:]
                block = [] if fenced else block
                if not fenced and block_lang in ("", "bash", "sh", "shell", "console"):
                    code += [(n, text) for text in _logical_lines(block)]
                block_lang = lang
                continue
            if fenced:
                block.append(line)
            elif line.startswith("    ") and line.strip().split(" ", 1)[0] in PROGRAMS:
                code.append((n, line.strip()))
        # Inline code in the prose: `snakemake --report results/report.html`
        for n, line in enumerate(lines, 1):
            for span in re.findall(r"`([^`]+)`", line):
                # a command with arguments, not a placeholder form (`cardigan extract [SRC]`)
                if (span.split(" ", 1)[0] in PROGRAMS and " " in span
                        and not any(c in span for c in "<|[…") and "..." not in span):
                    code.append((n, span))
        for n, text in code:
            for part in re.split(r"&&|;", text):
                words = shlex.split(part, comments=True)
                if words and words[0] in PROGRAMS:
                    found.append((f"{doc.relative_to(REPO)}:{n}", shlex.join(words)))
    seen: set[str] = set()  # each distinct command once (the first place it is shown)
    return [(w, c) for w, c in found if not (c in seen or seen.add(c))]


COMMANDS = documented_commands()


def test_the_docs_show_commands():
    where = {w.split(":")[0] for w, _ in COMMANDS}
    assert {"README.md", "docs/train.md", "docs/cluster.md", "docs/extract.md"} <= where, where
    assert any(c.startswith("cardigan ") for _, c in COMMANDS)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return completed_run(tmp_path_factory.getbasetemp())


def _on_tiny_config(work: Path) -> None:
    config = yaml.safe_load((work / "config.yaml").read_text())
    update_config(config, yaml.safe_load((work / TINY).read_text()))
    (work / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


def _user_masks(work: Path, folder: str) -> None:
    """The README's ``my_masks/``: a folder of PNG label images, here two of the run's masks."""
    import h5py
    from PIL import Image

    out = work / folder
    out.mkdir(parents=True, exist_ok=True)
    with h5py.File(work / "results/data/anno_train_4CH.h5") as f:
        for key in sorted(f)[:2]:
            Image.fromarray(f[key][()]).save(out / f"{key}.png")


@pytest.mark.parametrize(("where", "command"), COMMANDS, ids=[w for w, _ in COMMANDS])
def test_documented_command_runs(run, tmp_path, where, command):
    work = clone(run, tmp_path / "run")
    _on_tiny_config(work)
    phantom = str(work / "results/phantom/CAMUS_public")
    words = [CAMUS_PLACEHOLDER.sub(phantom, w) for w in shlex.split(command)]
    if "--masks" in words:
        _user_masks(work, words[words.index("--masks") + 1])
    if words[0] == "snakemake":
        cmd = [sys.executable, "-m", "snakemake", *words[1:]]
        if not any(w in NOT_DRY for w in words):
            cmd.append("-n")
        if "--cores" not in words and "--workflow-profile" not in words:
            cmd += ["--cores", "2"]
    else:
        cmd = [sys.executable, "-m", "cardigan.cli", *words[1:]]
    proc = subprocess.run(cmd, cwd=work, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "2"})
    assert proc.returncode == 0, (
        f"{where}: `{command}` failed ({proc.returncode}):\n" + (proc.stdout + proc.stderr)[-4000:])
