"""The evaluate stage: train a segmenter per setting, test on real images, write the results."""

from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..labels import INSTANTS
from . import features, metrics, report, segmenter
from .data import ImageSet, load_real, load_synthetic

log = logging.getLogger("cardigan")

SETTINGS = ("real", "synthetic", "mixed")


def _summary_rows(setting: str, instant: str, per_structure: dict, metric_names: dict) -> list[dict]:
    rows = []
    for structure, values in per_structure.items():
        for key, metric in metric_names.items():
            mean, std, n = metrics.summarise(values[key])
            rows.append(dict(setting=setting, instant=instant, structure=structure, metric=metric,
                             mean=mean, std=std, n=n))
    return rows


def segmentation_rows(setting: str, pred: np.ndarray, test: ImageSet, instants: list[str]) -> list[dict]:
    """Dice, HD95 and the fraction of undefined HD95 per instant (and pooled) and structure."""
    per_image = metrics.dice_hd95(pred, test.masks, test.spacing)
    rows = []
    for instant in [*instants, "all"]:
        sel = np.ones(len(test), bool) if instant == "all" else test.instant == instant
        sub = {st: {k: v[sel] for k, v in d.items()} for st, d in per_image.items()}
        rows += _summary_rows(setting, instant, sub, {"dice": "dice", "hd95": "hd95"})
        for st, d in sub.items():
            n = int(sel.sum())
            undefined = float(np.mean(~np.isfinite(d["hd95"]))) if n else float("nan")
            rows.append(dict(setting=setting, instant=instant, structure=st, metric="hd95_undefined",
                             mean=undefined, std=float("nan"), n=n))
    return rows


def fidelity_rows(pred: np.ndarray, synth: ImageSet) -> list[dict]:
    """Label fidelity: Dice of the real segmenter on synthetic images against their masks."""
    per_image = metrics.dice_hd95(pred, synth.masks, synth.spacing)
    instants = [i for i in INSTANTS if i in set(synth.instant)]
    rows = []
    for instant in [*instants, "all"]:
        sel = np.ones(len(synth), bool) if instant == "all" else synth.instant == instant
        sub = {st: {"dice": d["dice"][sel]} for st, d in per_image.items()}
        rows += _summary_rows("synthetic", instant, sub, {"dice": "label_fidelity_dice"})
    return rows


def distance_rows(ref: np.ndarray, others: dict[str, np.ndarray], fd_metric: str,
                  kid_metric: str | None, seed: int) -> list[dict]:
    """Fréchet distance (and KID, unless ``kid_metric`` is None) of each set to the reference.

    The row's ``setting`` names the compared image set; ``n`` is its size.
    """
    rows = []
    for setting, feats in others.items():
        fd = features.frechet_distance(feats, ref)
        rows.append(dict(setting=setting, instant="all", structure="all", metric=fd_metric,
                         mean=fd, std=float("nan"), n=len(feats)))
        if kid_metric is not None:
            mean, std, _ = features.kid(feats, ref, seed=seed)
            rows.append(dict(setting=setting, instant="all", structure="all", metric=kid_metric,
                             mean=mean, std=std, n=len(feats)))
    return rows


def _write_atomic(path: Path, write) -> Path:
    """Write through ``write(tmp_path)`` into a temp file beside ``path``; return the temp path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        tmp.chmod(0o644)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def run_evaluate(
    synthetic_h5: str | Path,
    data_dir: str | Path,
    views: list[str],
    cfg: dict,
    source: str,
    metrics_csv: str | Path,
    dice_png: str | Path,
    summary_md: str | Path,
    threads: int = 1,
) -> pd.DataFrame:
    """Run the whole evaluation and write metrics.csv, dice.png and summary.md.

    ``cfg`` is the validated ``evaluate`` config section. Nothing is written unless every step
    succeeds (outputs are written to temp files and renamed at the end).
    """
    torch.set_num_threads(max(1, int(threads)))
    settings = [s for s in SETTINGS if s in cfg["settings"]]
    device = segmenter.resolve_device(cfg["device"])
    log.info("evaluate: settings %s on %s, %d threads", settings, device, torch.get_num_threads())

    train = load_real(data_dir, "train", views)
    test = load_real(data_dir, "test", views)
    synth = load_synthetic(synthetic_h5)
    for name, s in (("real test", test), ("synthetic", synth)):
        if s.images.shape[1:] != train.images.shape[1:]:
            raise ValueError(f"{name} images are {s.images.shape[1:]} but real train images are "
                             f"{train.images.shape[1:]}: export and extract disagree on data.image_size")
    training_sets = {"real": train, "synthetic": synth, "mixed": ImageSet.concat(train, synth)}
    instants = [i for i in INSTANTS if i in set(test.instant)]
    log.info("real train %d, real test %d, synthetic %d frames", len(train), len(test), len(synth))

    rows: list[dict] = []
    trained: dict[str, segmenter.TrainedSegmenter] = {}
    for setting in settings:
        start = time.perf_counter()
        data = training_sets[setting]
        seg = segmenter.train_segmenter(
            data.images, data.masks, iterations=cfg["iterations"], batch_size=cfg["batch_size"],
            lr=cfg["lr"], seed=cfg["seed"], channels=cfg["channels"], device=device, name=setting)
        trained[setting] = seg
        tail = seg.losses[-max(1, len(seg.losses) // 10):]
        rows.append(dict(setting=setting, instant="all", structure="all", metric="train_loss_final",
                         mean=float(np.mean(tail)), std=float(np.std(tail)), n=len(tail)))
        rows += segmentation_rows(setting, segmenter.predict(seg, test.images), test, instants)
        log.info("setting %s: trained and tested in %.1f s", setting, time.perf_counter() - start)

    if "real" in trained:
        seg = trained["real"]
        rows += fidelity_rows(segmenter.predict(seg, synth.images), synth)
        ref = segmenter.encoder_features(seg, train.images)
        rows += distance_rows(ref, {"synthetic": segmenter.encoder_features(seg, synth.images),
                                    "real": segmenter.encoder_features(seg, test.images)},
                              "frechet_distance_segfeat", "kid_segfeat", cfg["seed"])
    else:
        log.info("label fidelity and feature distances skipped: 'real' is not in evaluate.settings")

    if cfg["inception_weights"]:
        start = time.perf_counter()
        net = features.load_fid_inception(cfg["inception_weights"])
        ref = features.inception_features(net, train.images, device)
        rows += distance_rows(ref, {"synthetic": features.inception_features(net, synth.images, device),
                                    "real": features.inception_features(net, test.images, device)},
                              "fid_inception", None, cfg["seed"])
        log.info("standard FID computed in %.1f s", time.perf_counter() - start)
    else:
        log.info("standard FID not computed: evaluate.inception_weights is not set")

    df = report.metrics_frame(rows)
    info = dict(settings=settings, source=source, config=cfg, augmentation=segmenter.AUGMENTATION,
                n_train={s: len(training_sets[s]) for s in settings}, n_test=len(test),
                n_synthetic=len(synth), instants=instants)
    outputs = [
        (Path(metrics_csv), lambda p: p.write_bytes(report.csv_bytes(df))),
        (Path(dice_png), lambda p: report.plot_dice(df, settings, [*instants, "all"], p)),
        (Path(summary_md), lambda p: p.write_text(report.summary_text(df, info))),
    ]
    tmps: list[Path] = []
    try:
        for path, write in outputs:
            tmps.append(_write_atomic(path, write))
    except BaseException:
        for t in tmps:
            t.unlink(missing_ok=True)
        raise
    for (path, _), tmp in zip(outputs, tmps):
        os.replace(tmp, path)
    return df

