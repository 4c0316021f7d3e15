"""Faults on the real workflow: a killed run, an unwritable or full results/, a damaged training
checkpoint, and two runs on one folder. Each must give a clear error and keep what was complete.

Root ignores file permissions, so as root "unwritable" is a read-only bind mount and "full" is a
filled tmpfs; where mounting is not allowed (many CI containers) the unwritable case skips and the
full-disk case injects ENOSPC into every write under the stage's folder instead (a
``sitecustomize`` on PYTHONPATH). The test ids say which variant ran; CARDIGAN_TEST_NO_MOUNT=1
forces the no-mount variants.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from workflow_helpers import (
    TINY,
    clone,
    completed_run,
    edit_tiny,
    planned_jobs,
    sha256,
    snakemake,
    tree_hashes,
)

pytestmark = pytest.mark.slow

IS_ROOT = os.geteuid() == 0


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return completed_run(tmp_path_factory.getbasetemp())


def popen_snakemake(work: Path, *args: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "snakemake", *args, "--cores", "2", "--configfile", TINY]
    # A session of its own: SIGKILL to the group takes the job's script process down too, as when
    # a node dies (killing only the snakemake process would leave the script running orphaned).
    return subprocess.Popen(
        cmd, cwd=work, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )


def wait_for(predicate, proc: subprocess.Popen, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"snakemake ended before {what}:\n{proc.stdout.read()[-4000:]}")
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def unchanged_except(before: dict, after: dict, prefixes: tuple[str, ...]) -> list[str]:
    """Files that existed before and differ (or vanished) after, outside ``prefixes``."""
    return sorted(p for p in before if not p.startswith(prefixes) and after.get(p) != before[p])


# ------------------------------------------------------------------------------------------------
def test_sigkill_during_training_resumes_from_checkpoint(run, tmp_path):
    work = clone(run, tmp_path / "run")
    reference = torch.load(run / "results/train/generator.pt", map_location="cpu", weights_only=True)
    reference_sha = sha256(run / "results/train/generator.pt")
    subprocess.run(["rm", "-rf", str(work / "results/train")], check=True)

    proc = popen_snakemake(work, "results/train/generator.pt")
    state_files = lambda: list((work / "results/train/state").glob("*/state.pt"))  # noqa: E731
    wait_for(lambda: bool(state_files()), proc, 600, "the first training checkpoint")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (work / "results/train/generator.pt").exists(), "training finished before the kill"

    # A killed Snakemake leaves its lock behind: the user (README) runs --unlock, then simply
    # reruns; rerun-incomplete (default profile) redoes the incomplete train job.
    refused = snakemake(work, "results/train/generator.pt", check=False)
    assert refused.returncode != 0 and "--unlock" in refused.stdout + refused.stderr
    snakemake(work, "--unlock")
    proc2 = snakemake(work, "results/train/generator.pt")
    train_log = (work / "results/logs/train.log").read_text()
    assert "resuming" in train_log, train_log[-3000:]
    line = next(line for line in train_log.splitlines() if "resuming" in line)
    done, total = (int(x) for x in line.split(" at iteration ")[1].split()[0].split("/"))
    assert 0 < done < total, line
    assert "Nothing to be done" not in proc2.stdout + proc2.stderr

    resumed = torch.load(work / "results/train/generator.pt", map_location="cpu", weights_only=True)
    flat = lambda sd: dict(sorted(  # noqa: E731
        (k, v) for k, v in _flatten(sd).items() if isinstance(v, torch.Tensor)))
    a, b = flat(reference), flat(resumed)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]
    assert sha256(work / "results/train/generator.pt") == reference_sha


def _flatten(obj, prefix=""):
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix: obj}


# ------------------------------------------------------------------------------------------------
def _can_mount() -> bool:
    if not IS_ROOT:
        return False
    probe = Path(f"/tmp/cardigan-mount-probe-{os.getpid()}")
    probe.mkdir(exist_ok=True)
    try:
        ok = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4k", "tmpfs", str(probe)],
                            capture_output=True).returncode == 0
        if ok:
            subprocess.run(["umount", str(probe)], check=True)
        return ok
    finally:
        probe.rmdir()


# CARDIGAN_TEST_NO_MOUNT=1 takes the no-mount path on a machine that could mount (to test it).
CAN_MOUNT = not os.environ.get("CARDIGAN_TEST_NO_MOUNT") and _can_mount()


@contextlib.contextmanager
def read_only(path: Path):
    """Make ``path`` unwritable for this process's children, root included."""
    if IS_ROOT:
        subprocess.run(["mount", "--bind", str(path), str(path)], check=True)
        try:
            subprocess.run(["mount", "-o", "remount,bind,ro", str(path)], check=True)
            yield
        finally:
            subprocess.run(["umount", str(path)], check=True)
    else:
        modes = {p: p.stat().st_mode for p in [path, *path.rglob("*")] if p.is_dir()}
        for p in modes:
            p.chmod(modes[p] & ~0o222)
        try:
            yield
        finally:
            for p, mode in modes.items():
                p.chmod(mode)


@pytest.mark.skipif(IS_ROOT and not CAN_MOUNT,
                    reason="as root only a read-only mount makes results/ unwritable, and mounting "
                    "is not allowed here")
def test_unwritable_results_fails_clearly_and_keeps_outputs(run, tmp_path):
    work = clone(run, tmp_path / "run")
    edit_tiny(work, "evaluate", "iterations", 10)
    before = tree_hashes(work)
    with read_only(work / "results"):
        proc = snakemake(work, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    # Snakemake itself notices that the outputs to replace cannot be written, before any job.
    assert any(
        msg in out
        for msg in ("Write-protected output files", "Read-only file system", "Permission denied")
    ), out[-3000:]
    # Which of the protected outputs Snakemake names first is not promised: one of them is named.
    assert any(f in out for f in ("results/evaluate/", "results/manifest.tsv")), out[-3000:]
    assert tree_hashes(work) == before
    # Writable again, the same run picks up where it stood: evaluate (and the manifest) only.
    assert set(planned_jobs(work)) == {"evaluate", "manifest"}


SITECUSTOMIZE = textwrap.dedent('''
    """Injected by tests/test_faults.py: every write under $CARDIGAN_ENOSPC_UNDER fails (disk full)."""
    import builtins, errno, io, os

    _root = os.environ.get("CARDIGAN_ENOSPC_UNDER")
    if _root:
        def _full(path):
            try:
                return os.path.abspath(os.fspath(path)).startswith(_root)
            except TypeError:
                return False

        def _raise(path):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.fspath(path))

        _open, _os_open = io.open, os.open

        def _patched_open(file, mode="r", *args, **kwargs):
            if any(c in mode for c in "wax+") and _full(file):
                _raise(file)
            return _open(file, mode, *args, **kwargs)

        def _patched_os_open(path, flags, *args, **kwargs):
            if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) and _full(path):
                _raise(path)
            return _os_open(path, flags, *args, **kwargs)

        builtins.open = io.open = _patched_open
        os.open = _patched_os_open
''')


@contextlib.contextmanager
def full_disk(folder: Path, tmp_path: Path):
    """Yield extra environment for snakemake under which writes into ``folder`` hit ENOSPC."""
    folder.mkdir(parents=True, exist_ok=True)
    if CAN_MOUNT:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(folder)], check=True)
        try:
            # Fill it to the last block.
            fd = os.open(folder / "filler", os.O_WRONLY | os.O_CREAT)
            try:
                while True:
                    os.write(fd, b"\0" * 4096)
            except OSError as err:
                assert err.errno == errno.ENOSPC, err
            finally:
                os.close(fd)
            yield {}
        finally:
            subprocess.run(["umount", str(folder)], check=True)
    else:
        inject = tmp_path / "inject"
        inject.mkdir()
        (inject / "sitecustomize.py").write_text(SITECUSTOMIZE)
        path = os.pathsep.join(filter(None, [str(inject), os.environ.get("PYTHONPATH")]))
        yield {"PYTHONPATH": path, "CARDIGAN_ENOSPC_UNDER": str(folder.resolve())}


@pytest.mark.parametrize("variant", ["tmpfs" if CAN_MOUNT else "injected-ENOSPC"])
def test_full_disk_fails_clearly_and_keeps_outputs(run, tmp_path, variant):
    work = clone(run, tmp_path / "run")
    edit_tiny(work, "evaluate", "iterations", 10)
    # Snakemake deletes a job's old outputs before running it; do that here, or the mount would
    # merely hide them and they would reappear, stale, afterwards.
    for f in (work / "results/evaluate").iterdir():
        f.unlink()
    before = tree_hashes(work)
    with full_disk(work / "results/evaluate", tmp_path) as env:
        proc = snakemake(work, check=False, env=env)
        folder = work / "results/evaluate"  # Snakemake may remove it when it is left empty
        leftovers = sorted(p.name for p in folder.glob("*") if p.name != "filler")
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "No space left on device" in out, out[-3000:]
    assert "No space left on device" in (work / "results/logs/evaluate.log").read_text()
    assert leftovers == [], f"partial outputs left in results/evaluate: {leftovers}"
    assert unchanged_except(before, tree_hashes(work), ("results/evaluate/",)) == []
    assert set(planned_jobs(work)) == {"evaluate", "manifest"}


# ------------------------------------------------------------------------------------------------
def test_corrupt_training_checkpoint_fails_clearly(run, tmp_path):
    work = clone(run, tmp_path / "run")
    (state,) = (work / "results/train/state").glob("*/state.pt")
    state.write_bytes(state.read_bytes()[:1000])  # truncated, as by a full disk or a bad copy
    damaged = sha256(state)
    # More epochs: the same training fingerprint, so the run resumes from (this) state.
    edit_tiny(work, "train", "epochs", 3)
    before = tree_hashes(work)
    proc = snakemake(work, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "corrupt" in out and str(state.relative_to(work)) in out, out[-3000:]
    assert sha256(state) == damaged, "the damaged checkpoint was changed or removed"
    lost = unchanged_except(before, tree_hashes(work), ("results/train/", "results/sample/",
                                                        "results/export/", "results/evaluate/",
                                                        "results/manifest.tsv"))
    assert lost == [], lost


# ------------------------------------------------------------------------------------------------
def test_second_snakemake_on_the_same_folder_is_refused(run, tmp_path):
    work = clone(run, tmp_path / "run")
    # A training change re-runs train, sample, export and evaluate: the first run holds its lock
    # for tens of seconds, far longer than the second needs to start.
    edit_tiny(work, "train", "epochs", 4)
    first = popen_snakemake(work)
    locks = work / ".snakemake" / "locks"
    wait_for(lambda: locks.is_dir() and any(locks.iterdir()), first, 120, "the first run's lock")
    second = snakemake(work, check=False)
    out = second.stdout + second.stderr
    assert second.returncode != 0
    assert "cannot be locked" in out and "--unlock" in out, out[-3000:]
    assert first.wait(timeout=600) == 0, first.stdout.read()[-3000:]
    assert planned_jobs(work) == {}
