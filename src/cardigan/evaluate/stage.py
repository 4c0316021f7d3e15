"""The evaluate stage: train a segmenter per setting, test on real images, write the results."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cardigan.core import layout
from cardigan.core.atomic import atomic_outputs
from cardigan.core.labels import INSTANTS
from cardigan.evaluate import features, metrics, report, runs, segmenter, texture
from cardigan.evaluate.data import ImageSet, load_real, load_synthetic

log = logging.getLogger("cardigan")

SETTINGS = ("real", "synthetic", "mixed", "finetuned")
WORST_SHOWN = 6  # real test images shown in worst.png


def _summary_rows(setting: str, instant: str, per_structure: dict, metric_names: dict) -> list[dict]:
    rows = []
    for structure, values in per_structure.items():
        for key, metric in metric_names.items():
            mean, std, n = metrics.summarise(values[key])
            rows.append(dict(setting=setting, instant=instant, structure=structure, metric=metric,
                             mean=mean, std=std, n=n))
    return rows


def segmentation_rows(setting: str, per_seed: list[dict], test: ImageSet,
                      instants: list[str]) -> list[dict]:
    """Dice and HD95 per instant (and pooled) and structure, over segmenter seeds.

    ``per_seed`` holds one :func:`metrics.dice_hd95` result per seed. ``dice``: mean over images
    and seeds, std over images (averaged over seeds); ``dice_seed_std``: std over seeds of the
    per-seed mean (n = seeds); ``hd95``: over all finite values; ``hd95_undefined``: share of
    empty predictions; ``outside``: the predicted area far from the structure (share of its
    area), over all images and seeds.
    """
    rows = []
    for instant in [*instants, "all"]:
        sel = np.ones(len(test), bool) if instant == "all" else test.instant == instant
        n = int(sel.sum())
        for st in per_seed[0]:
            dice = np.stack([d[st]["dice"][sel] for d in per_seed])  # (seeds, images)
            hd = np.stack([d[st]["hd95"][sel] for d in per_seed])
            seed_means = dice.mean(axis=1) if n else np.full(len(per_seed), np.nan)
            image_std = float(np.mean(dice.std(axis=1))) if n else float("nan")
            rows.append(dict(setting=setting, instant=instant, structure=st, metric="dice",
                             mean=float(dice.mean()) if n else float("nan"), std=image_std, n=n))
            rows.append(dict(setting=setting, instant=instant, structure=st,
                             metric="dice_seed_std", mean=float(np.std(seed_means)),
                             std=float("nan"), n=len(per_seed)))
            hd_mean, hd_std, _ = metrics.summarise(hd.ravel())
            rows.append(dict(setting=setting, instant=instant, structure=st, metric="hd95",
                             mean=hd_mean, std=hd_std, n=n))
            undefined = float(np.mean(~np.isfinite(hd))) if n else float("nan")
            rows.append(dict(setting=setting, instant=instant, structure=st,
                             metric="hd95_undefined", mean=undefined, std=float("nan"), n=n))
            outside = np.stack([d[st]["outside"][sel] for d in per_seed])
            out_mean, out_std, _ = metrics.summarise(outside.ravel())
            rows.append(dict(setting=setting, instant=instant, structure=st, metric="outside",
                             mean=out_mean, std=out_std, n=n))
    return rows


def usefulness_rows(per_seed: dict[str, list[dict]]) -> list[dict]:
    """The headline: Dice(setting) - Dice(real) per structure, paired by segmenter seed, for
    ``synthetic`` and ``mixed``: mean and std over seeds."""
    rows = []
    if "real" not in per_seed:
        return rows
    for setting in report.USEFULNESS_SETTINGS:
        if setting not in per_seed:
            continue
        for st in per_seed["real"][0]:
            diffs = [float(np.mean(a[st]["dice"]) - np.mean(r[st]["dice"]))
                     for a, r in zip(per_seed[setting], per_seed["real"], strict=True)]
            rows.append(dict(setting=setting, instant="all", structure=st,
                             metric="usefulness_dice", mean=float(np.mean(diffs)),
                             std=float(np.std(diffs)), n=len(diffs)))
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


def texture_rows(real: ImageSet, synth: ImageSet, field: np.ndarray) -> list[dict]:
    """Per region: intensity mean/std and the speckle statistic, real train vs synthetic."""
    rows = []
    for setting, data in (("real", real), ("synthetic", synth)):
        stats = texture.region_stats(data.images, data.masks, field)
        for region, per in stats.items():
            for metric, values in per.items():
                mean, std, n = metrics.summarise(values)
                rows.append(dict(setting=setting, instant="all", structure=region,
                                 metric=metric, mean=mean, std=std, n=n))
    return rows


def diversity_rows(real: ImageSet, synth: ImageSet, field: np.ndarray,
                   feats: dict[str, np.ndarray] | None) -> list[dict]:
    """Between-style spread of one mask's samples; brightness and feature spread of each set."""
    mean, std, n = texture.within_mask_spread(synth.images, synth.masks, synth.group, field)
    rows = [dict(setting="synthetic", instant="all", structure="outside",
                 metric="within_mask_spread", mean=mean, std=std, n=n)]
    for setting, data in (("real", real), ("synthetic", synth)):
        b = texture.brightness(data.images, field)
        rows.append(dict(setting=setting, instant="all", structure="all",
                         metric="brightness_spread", mean=float(np.std(b)),
                         std=float("nan"), n=len(b)))
        if feats is not None:
            rows.append(dict(setting=setting, instant="all", structure="all",
                             metric="feature_spread_segfeat",
                             mean=texture.feature_spread(feats[setting]), std=float("nan"),
                             n=len(feats[setting])))
    return rows


def worst_images(per_seed: list[dict], k: int) -> np.ndarray:
    """Indices of the ``k`` test images with the lowest Dice (mean over structures and seeds)."""
    dice = np.mean([np.stack([d[st]["dice"] for st in d]) for d in per_seed], axis=(0, 1))
    return np.argsort(dice, kind="stable")[:k]


def run_evaluate(
    synthetic_h5: str | Path,
    data_dir: str | Path,
    views: list[str],
    cfg: dict,
    source: str,
    metrics_csv: str | Path,
    dice_png: str | Path,
    summary_md: str | Path,
    worst_png: str | Path,
    threads: int = 1,
    train_dir: str | Path | None = None,
    label_budget: bool = False,
) -> pd.DataFrame:
    """Run the whole evaluation and write metrics.csv, dice.png, worst.png and summary.md.

    The real train split is read from ``train_dir`` (default ``data_dir``: a label budget's
    subset lives in a folder of its own), the real test split from ``data_dir``.
    ``label_budget``: summary.md links the label-budget curve (:mod:`cardigan.label_budget`).

    ``cfg`` is the validated ``evaluate`` config section. Nothing is written unless every step
    succeeds (outputs are written to temp files and renamed at the end). ``threads``: CPU
    threads; the segmenter runs use them as that many one-thread processes (:mod:`.runs`), so
    the caller's entry point must be guarded by ``if __name__ == "__main__":``.
    """
    torch.set_num_threads(max(1, int(threads)))
    settings = [s for s in SETTINGS if s in cfg["settings"]]
    device = segmenter.resolve_device(cfg["device"])
    log.info("evaluate: settings %s on %s, %d threads", settings, device, torch.get_num_threads())
    images = _load_images(synthetic_h5, data_dir if train_dir is None else train_dir, data_dir,
                          views)
    seeds = [cfg["seed"] + r for r in range(cfg["repeats"])]
    results = _train_segmenters(images, settings, seeds, cfg, device, threads)
    rows, per_seed, first_pred = _segmentation_measures(images, settings, results)
    rows += _image_measures(images, results, cfg, device)
    rows += _inception_fid_rows(images, cfg, device)
    df = report.metrics_frame(rows)
    info = _summary_info(images, settings, seeds, source, cfg)
    if label_budget:
        info["label_budget_link"] = Path(os.path.relpath(
            layout.label_budget_outputs()["summary"], Path(summary_md).parent)).as_posix()
    _write_outputs(df, info, images.test, per_seed, first_pred,
                   Path(metrics_csv), Path(dice_png), Path(worst_png), Path(summary_md))
    return df


@dataclass(frozen=True)
class _Images:
    train: ImageSet  # the real train split
    test: ImageSet  # the real test split
    synth: ImageSet  # the export's generated rows
    training_sets: dict[str, ImageSet]  # per setting
    instants: list[str]  # those of the test split, in INSTANTS order


def _load_images(synthetic_h5: str | Path, train_dir: str | Path, test_dir: str | Path,
                 views: list[str]) -> _Images:
    train = load_real(train_dir, "train", views)
    test = load_real(test_dir, "test", views)
    synth = load_synthetic(synthetic_h5)
    for name, s in (("real test", test), ("synthetic", synth)):
        if s.images.shape[1:] != train.images.shape[1:]:
            raise ValueError(f"{name} images are {s.images.shape[1:]} but real train images are "
                             f"{train.images.shape[1:]}: export and extract disagree on data.image_size")
    # mixed puts the real images first: _train_segmenters relies on it; finetuned trains on the
    # same images, the synthetic ones first (runs._run)
    both = ImageSet.concat(train, synth)
    training_sets = {"real": train, "synthetic": synth, "mixed": both, "finetuned": both}
    instants = [i for i in INSTANTS if i in set(test.instant)]
    log.info("real train %d, real test %d, synthetic %d frames", len(train), len(test), len(synth))
    return _Images(train, test, synth, training_sets, instants)


def _train_segmenters(images: _Images, settings: list[str], seeds: list[int], cfg: dict,
                      device: torch.device, threads: int) -> list[runs.RunResult]:
    """One U-Net per (setting, seed), trained and tested on the real test split."""
    # mixed: real images first, drawn with this probability (null: uniform over the union)
    fraction = cfg["mixed_real_fraction"]
    mixing = None if fraction is None else (len(images.train), float(fraction))
    # only the real-trained U-Net is used again (label fidelity, feature distances)
    jobs = [runs.Job(setting, seed, keep_model=setting == "real" and seed == seeds[0])
            for setting in settings for seed in seeds]
    start = time.perf_counter()
    results = runs.train_and_test(jobs, images.training_sets, images.test, cfg, mixing, device,
                                  workers=threads)
    log.info("%d segmenters trained and tested in %.1f s (%s)", len(jobs),
             time.perf_counter() - start,
             ", ".join(f"{r.job.setting} seed {r.job.seed} {r.seconds:.1f} s" for r in results))
    return results


def _segmentation_measures(images: _Images, settings: list[str], results: list[runs.RunResult],
                           ) -> tuple[list[dict], dict[str, list[dict]], dict[str, np.ndarray]]:
    """Final training loss, Dice and HD95 rows per setting and the usefulness rows; also each
    setting's per-seed test scores and its first seed's test predictions."""
    rows: list[dict] = []
    per_seed: dict[str, list[dict]] = {}
    first_pred: dict[str, np.ndarray] = {}
    for setting in settings:
        done = [r for r in results if r.job.setting == setting]
        per_seed[setting] = [r.scores for r in done]
        losses = [r.final_loss for r in done]
        first_pred[setting] = done[0].pred
        rows.append(dict(setting=setting, instant="all", structure="all", metric="train_loss_final",
                         mean=float(np.mean(losses)), std=float(np.std(losses)), n=len(losses)))
        rows += segmentation_rows(setting, per_seed[setting], images.test, images.instants)
    rows += usefulness_rows(per_seed)
    return rows, per_seed, first_pred


def _image_measures(images: _Images, results: list[runs.RunResult], cfg: dict,
                    device: torch.device) -> list[dict]:
    """Texture, label fidelity, feature distances and diversity of the image sets."""
    train, test, synth = images.train, images.test, images.synth
    field = texture.imaging_field(train.images)
    rows = texture_rows(train, synth, field)
    feats = None
    kept = [r.state for r in results if r.state is not None]
    if kept:
        model = segmenter.build_unet(cfg["channels"]).to(device)
        model.load_state_dict(kept[0])
        seg = segmenter.TrainedSegmenter(model.eval(), device)
        rows += fidelity_rows(segmenter.predict(seg, synth.images), synth)
        feats = {"real": segmenter.encoder_features(seg, train.images),
                 "synthetic": segmenter.encoder_features(seg, synth.images),
                 "real_test": segmenter.encoder_features(seg, test.images)}
        # Synthetic images are made from train masks: the test split is the unbiased reference.
        rows += distance_rows(feats["real"], {"synthetic": feats["synthetic"],
                                              "real_test": feats["real_test"]},
                              "frechet_distance_segfeat", "kid_segfeat", cfg["seed"])
        rows += distance_rows(feats["real_test"], {"synthetic": feats["synthetic"],
                                                   "real": feats["real"]},
                              "frechet_distance_segfeat_test", "kid_segfeat_test", cfg["seed"])
    else:
        log.info("label fidelity and feature distances skipped: 'real' is not in evaluate.settings")
    return rows + diversity_rows(train, synth, field, feats)


def _inception_fid_rows(images: _Images, cfg: dict, device: torch.device) -> list[dict]:
    """The standard FID, only with local Inception weights (nothing is downloaded)."""
    if not cfg["inception_weights"]:
        log.info("standard FID not computed: evaluate.inception_weights is not set")
        return []
    start = time.perf_counter()
    net = features.load_fid_inception(cfg["inception_weights"])
    ref = features.inception_features(net, images.train.images, device)
    ref_test = features.inception_features(net, images.test.images, device)
    syn_feats = features.inception_features(net, images.synth.images, device)
    rows = distance_rows(ref, {"synthetic": syn_feats, "real_test": ref_test},
                         "fid_inception", None, cfg["seed"])
    rows += distance_rows(ref_test, {"synthetic": syn_feats, "real": ref},
                          "fid_inception_test", None, cfg["seed"])
    log.info("standard FID computed in %.1f s", time.perf_counter() - start)
    return rows


def _summary_info(images: _Images, settings: list[str], seeds: list[int], source: str,
                  cfg: dict) -> dict:
    """What :func:`report.summary_text` states besides the metrics."""
    synth = images.synth
    return dict(settings=settings, source=source, config=cfg, augmentation=segmenter.AUGMENTATION,
                n_train={s: len(images.training_sets[s]) for s in settings},
                n_test=len(images.test), n_synthetic=len(synth), instants=images.instants,
                seeds=seeds,
                worst_setting="synthetic" if "synthetic" in settings else settings[0],
                samples_per_mask=len(synth) / max(1, len(set(synth.group))))


def _write_outputs(df: pd.DataFrame, info: dict, test: ImageSet, per_seed: dict[str, list[dict]],
                   first_pred: dict[str, np.ndarray], metrics_csv: Path, dice_png: Path,
                   worst_png: Path, summary_md: Path) -> None:
    """Write metrics.csv, dice.png, worst.png and summary.md: all of them or none."""
    settings, worst_setting = info["settings"], info["worst_setting"]
    worst = worst_images(per_seed[worst_setting], min(WORST_SHOWN, len(test)))
    per_image = {s: np.mean([np.stack([d[st]["dice"] for st in d]) for d in per_seed[s]], axis=0)
                 for s in settings}  # (structures, test images), mean over seeds
    structures = list(per_seed[settings[0]][0])
    info = {**info, "by_quality": report.by_quality(per_image, structures, test.quality),
            "outside_worst": report.outside_worst(per_seed)}
    outputs = [
        (metrics_csv, lambda p: p.write_bytes(report.csv_bytes(df))),
        (dice_png, lambda p: report.plot_dice(df, settings, [*info["instants"], "all"], p,
                                              per_image)),
        (worst_png, lambda p: report.plot_worst(
            test.images[worst], test.masks[worst],
            {s: first_pred[s][worst] for s in settings},
            per_image[worst_setting][:, worst].mean(axis=0), worst_setting, p)),
        (summary_md, lambda p: p.write_text(report.summary_text(df, info))),
    ]
    with atomic_outputs([Path(path) for path, _ in outputs]) as tmps:
        for (_, write), tmp in zip(outputs, tmps):
            write(tmp)
