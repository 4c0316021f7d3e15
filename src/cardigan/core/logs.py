"""Logging for pipeline stages: one log file per job, with the facts needed to debug a run."""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

from cardigan.core.version import __version__

log = logging.getLogger("cardigan")

_ENV_KEYS = ("SLURM_JOB_ID", "SLURM_JOB_NODELIST", "CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS")


@contextlib.contextmanager
def stage_logging(log_path: str | Path | None, stage: str, threads: int | None = None) -> Iterator[logging.Logger]:
    """Send the ``cardigan`` logger to ``log_path`` (and stderr) for the duration of a stage.

    Writes a header with host, versions, thread count and scheduler variables (``SLURM_JOB_ID``
    shows whether the job ran on a cluster), and logs any exception with its traceback before
    re-raising it, so that the log file alone explains a failure.
    """
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_path is not None:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_path, mode="w"))
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S")
    for h in handlers:
        h.setFormatter(fmt)
        log.addHandler(h)
    old_level = log.level
    log.setLevel(logging.INFO)
    try:
        log.info("stage %s | cardigan %s | python %s | host %s", stage, __version__,
                 platform.python_version(), socket.gethostname())
        if threads is not None:
            log.info("threads: %d", threads)
        for key in _ENV_KEYS:
            if key in os.environ:
                log.info("%s=%s", key, os.environ[key])
        yield log
    except BaseException:
        log.exception("stage %s failed", stage)
        raise
    finally:
        for h in handlers:
            log.removeHandler(h)
            h.close()
        log.setLevel(old_level)
