"""The segmenter runs of the evaluation: one U-Net per (setting, seed), trained and tested.

On the CPU every run trains on one thread, and up to ``workers`` runs go side by side in
processes of their own: the evaluation's small U-Net uses two threads poorly (on a 2-core AVX2
machine two one-thread runs side by side finish 1.4x sooner than one after the other on two
threads), and a run's result then depends only on its seed, never on the number of cores. On
CUDA the runs go one after another in this process.

Worker processes are started with ``spawn`` (forking a process that holds torch's OpenMP threads
is not safe), so a script that calls :func:`train_and_test` must guard its entry point with
``if __name__ == "__main__":``.
"""

from __future__ import annotations

import logging
import logging.handlers
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from cardigan.evaluate import metrics, segmenter
from cardigan.evaluate.data import ImageSet

log = logging.getLogger("cardigan")


@dataclass(frozen=True)
class Job:
    setting: str
    seed: int
    keep_model: bool  # return the trained weights (the run whose U-Net is used again)


@dataclass
class RunResult:
    """What one run leaves: per-image scores on the test images, the test predictions, the mean
    of the last tenth of its losses, and (``keep_model`` runs) the trained weights."""

    job: Job
    scores: dict[str, dict[str, np.ndarray]]
    pred: np.ndarray
    final_loss: float
    seconds: float
    state: dict[str, torch.Tensor] | None


@dataclass(frozen=True)
class _Inputs:
    training_sets: dict[str, ImageSet]
    test: ImageSet
    cfg: dict[str, Any]
    mixing: tuple[int, float] | None
    device: str


_inputs: _Inputs | None = None  # a worker's inputs, set once by _init_worker


def finetune_split(iterations: int, fraction: float) -> tuple[int, int]:
    """The finetuned setting's (pretraining, fine-tuning) iterations: together ``iterations``,
    at least one each."""
    if iterations < 2:
        raise ValueError(f"evaluate.iterations: {iterations}; the finetuned setting needs at least "
                         "2 (pretraining and fine-tuning)")
    fine = min(iterations - 1, max(1, round(iterations * fraction)))
    return iterations - fine, fine


def _train(job: Job, inputs: _Inputs) -> segmenter.TrainedSegmenter:
    cfg = inputs.cfg
    common = dict(batch_size=cfg["batch_size"], lr=cfg["lr"], seed=job.seed,
                  channels=cfg["channels"], device=torch.device(inputs.device))
    name = f"{job.setting} seed {job.seed}"
    if job.setting != "finetuned":
        data = inputs.training_sets[job.setting]
        return segmenter.train_segmenter(
            data.images, data.masks, iterations=cfg["iterations"], name=name,
            first_fraction=inputs.mixing if job.setting == "mixed" else None, **common)
    # Pretrain on the synthetic images, then fine-tune the same network on the real ones (a
    # fresh optimiser), within the iterations every other setting gets.
    pre, fine = finetune_split(cfg["iterations"], cfg["finetune_fraction"])
    synth, real = inputs.training_sets["synthetic"], inputs.training_sets["real"]
    pretrained = segmenter.train_segmenter(synth.images, synth.masks, iterations=pre,
                                           name=f"{name} (pretraining on synthetic)", **common)
    tuned = segmenter.train_segmenter(real.images, real.masks, iterations=fine,
                                      name=f"{name} (fine-tuning on real)",
                                      start_from=pretrained.model, **common)
    tuned.losses[:0] = pretrained.losses
    return tuned


def _run(job: Job, inputs: _Inputs) -> RunResult:
    start = time.perf_counter()
    seg = _train(job, inputs)
    pred = segmenter.predict(seg, inputs.test.images)
    scores = metrics.dice_hd95(pred, inputs.test.masks, inputs.test.spacing)
    tail = seg.losses[-max(1, len(seg.losses) // 10):]
    state = ({k: v.detach().cpu() for k, v in seg.model.state_dict().items()}
             if job.keep_model else None)
    return RunResult(job, scores, pred, float(np.mean(tail)), time.perf_counter() - start, state)


def _init_worker(inputs: _Inputs, queue: Any) -> None:
    global _inputs
    _inputs = inputs
    torch.set_num_threads(1)
    logger = logging.getLogger("cardigan")
    logger.handlers[:] = [logging.handlers.QueueHandler(queue)]
    logger.setLevel(logging.INFO)
    logger.propagate = False


def _run_in_worker(job: Job) -> RunResult:
    assert _inputs is not None, "worker not initialised"
    return _run(job, _inputs)


def train_and_test(jobs: list[Job], training_sets: dict[str, ImageSet], test: ImageSet,
                   cfg: dict[str, Any], mixing: tuple[int, float] | None, device: torch.device,
                   workers: int) -> list[RunResult]:
    """Run ``jobs`` (results in the same order). ``cfg`` is the ``evaluate`` section; ``mixing``
    the mixed setting's ``(real images, share)``; ``workers`` processes on the CPU."""
    inputs = _Inputs(training_sets, test, cfg, mixing, str(device))
    workers = max(1, min(int(workers), len(jobs)))
    if device.type != "cpu" or workers == 1:
        threads = torch.get_num_threads()
        if device.type == "cpu":
            torch.set_num_threads(1)
        try:
            return [_run(job, inputs) for job in jobs]
        finally:
            torch.set_num_threads(threads)
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    # worker log records go through this process's handlers (the stage log)
    listener = logging.handlers.QueueListener(queue, *_handlers(log), respect_handler_level=True)
    listener.start()
    try:
        with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker,
                                 initargs=(inputs, queue)) as pool:
            return list(pool.map(_run_in_worker, jobs))
    finally:
        listener.stop()


def _handlers(logger: logging.Logger) -> list[logging.Handler]:
    handlers: list[logging.Handler] = []
    while logger is not None:
        handlers += logger.handlers
        logger = logger.parent if logger.propagate else None
    return handlers
