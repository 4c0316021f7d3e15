"""The evaluation's outputs: tidy metrics.csv, the Dice bar chart and summary.md.

All three are byte-reproducible: fixed row order, fixed float format, no timestamps, and PNG
metadata without the matplotlib version.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pandas as pd

from cardigan.core.labels import STRUCTURES
from cardigan.core.plots import label_rgb, plt
from cardigan.evaluate.metrics import OUTSIDE_MARGIN_MM
from cardigan.evaluate.runs import finetune_split

#: The spread verdict: the synthetic-trained segmenter's per-image Dice std may be this many times
#: the real-trained one's; and its worst test image may be this much below the real one's worst.
SPREAD_LIMIT = 1.5
WORST_GAP_LIMIT = 0.10

COLUMNS = ["setting", "instant", "structure", "metric", "mean", "std", "n"]

#: The settings compared with real (Dice(setting) - Dice(real), "usefulness"), in table order.
USEFULNESS_SETTINGS = ("synthetic", "mixed", "finetuned")

#: Published Dice on real CAMUS (from ../shared/docs/camus.md, "Reference results").
REFERENCES = [
    ("U-Net trained on real CAMUS (Leclerc et al. 2019)", {"LV_endo": 0.93, "LV_epi": 0.95, "LA": 0.89}),
    ("trained on synthetic only, semantic diffusion model (Stojanovski et al. 2023, "
     "\"Echo from Noise\")", {"LV_endo": 0.886, "LV_epi": 0.919, "LA": 0.852}),
]


def metrics_frame(rows: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=COLUMNS)
    df["n"] = df["n"].astype(int)
    return df


def csv_bytes(df: pd.DataFrame) -> bytes:
    """metrics.csv content: 6 significant digits, NaN as an empty field, LF line ends."""
    buf = io.StringIO()
    df.to_csv(buf, index=False, float_format="%.6g", lineterminator="\n")
    return buf.getvalue().encode()


def plot_dice(df: pd.DataFrame, settings: list[str], instants: list[str], path: str | Path,
              per_image: dict[str, np.ndarray] | None = None) -> None:
    """Top: grouped bars of test Dice (mean; error bar = std over segmenter seeds), one panel per
    instant. Bottom (with ``per_image``, (structures, images) Dice per setting, mean over seeds):
    the per-image distribution as box + strip plot, so single failures are visible."""
    structures = list(STRUCTURES)
    dice = df[(df.metric == "dice") & df.setting.isin(settings)]
    spread = df[(df.metric == "dice_seed_std") & df.setting.isin(settings)]
    n_rows = 2 if per_image is not None else 1
    fig, axes = plt.subplots(n_rows, len(instants), figsize=(4.2 * len(instants), 3.6 * n_rows),
                             squeeze=False)
    width = 0.8 / len(settings)
    colours = plt.get_cmap("tab10")
    for ax, instant in zip(axes[0], instants):
        sub = dice[dice.instant == instant]
        err = spread[spread.instant == instant]
        for k, setting in enumerate(settings):
            rows = sub[sub.setting == setting].set_index("structure").reindex(structures)
            e = err[err.setting == setting].set_index("structure").reindex(structures)
            xs = [i - 0.4 + width * (k + 0.5) for i in range(len(structures))]
            ax.bar(xs, rows["mean"].fillna(0), width, yerr=e["mean"].fillna(0), capsize=3,
                   color=colours(k), label=setting)
        ax.set_xticks(range(len(structures)), structures)
        ax.set_ylim(0, 1.05)
        ax.set_title(f"{instant}" if instant != "all" else "ED and ES pooled")
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("Dice on the real test split\n(error bar: std over seeds)")
    axes[0][-1].legend(title="trained on", loc="lower right", fontsize=8)
    if per_image is not None:
        ax = axes[1][0]
        jitter = np.random.default_rng(0)
        for k, setting in enumerate(settings):
            for i, st in enumerate(structures):
                values = per_image[setting][i]
                x = i - 0.4 + width * (k + 0.5)
                ax.boxplot([values], positions=[x], widths=width * 0.8, showfliers=False,
                           medianprops={"color": "black"}, manage_ticks=False)
                ax.scatter(x + jitter.uniform(-width / 4, width / 4, len(values)), values, s=6,
                           color=colours(k), alpha=0.7, label=setting if i == 0 else None)
        ax.set_xticks(range(len(structures)), structures)
        ax.set_ylim(min(0.0, float(np.nanmin([v.min() for v in per_image.values()]))), 1.02)
        ax.set_ylabel("per-image Dice (mean over seeds)")
        ax.set_title("per real test image, ED and ES")
        ax.grid(axis="y", alpha=0.3)
        for extra in axes[1][1:]:
            extra.set_axis_off()
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100, metadata={"Software": None})
    plt.close(fig)


def plot_worst(images: np.ndarray, masks: np.ndarray, preds: dict[str, np.ndarray],
               dice: np.ndarray, worst_setting: str, path: str | Path) -> None:
    """The real test images the ``worst_setting`` segmenter does worst on: image, ground truth
    and each setting's prediction (first seed), Dice (mean over structures and seeds) in the
    title."""
    cols = ["image", "ground truth", *[f"{s}-trained" for s in preds]]
    n = len(images)
    fig, axes = plt.subplots(max(n, 1), len(cols), figsize=(1.9 * len(cols), 1.9 * max(n, 1)),
                             squeeze=False)
    for r in range(n):
        cells = [images[r], label_rgb(masks[r]), *[label_rgb(p[r]) for p in preds.values()]]
        for c, cell in enumerate(cells):
            ax = axes[r][c]
            ax.imshow(cell, cmap="gray" if cell.ndim == 2 else None, vmin=0, vmax=255,
                      interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(cols[c], fontsize=8)
        axes[r][0].set_ylabel(f"Dice {dice[r]:.2f}", fontsize=8)
    fig.suptitle(f"Worst real test images of the {worst_setting}-trained segmenter", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100, metadata={"Software": None})
    plt.close(fig)


def _fmt(mean: float, std: float, digits: int = 3) -> str:
    if mean is None or math.isnan(mean):
        return "n/a"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def _get(df: pd.DataFrame, **where) -> pd.Series | None:
    sel = df
    for k, v in where.items():
        sel = sel[sel[k] == v]
    return None if sel.empty else sel.iloc[0]


def _cell(df: pd.DataFrame, digits: int = 3, **where) -> str:
    r = _get(df, **where)
    return _fmt(r["mean"], r["std"], digits) if r is not None else "n/a"


def _mixing_sentence(cfg: dict, settings: list[str]) -> str:
    if "mixed" not in settings:
        return ""
    fraction = cfg["mixed_real_fraction"]
    if fraction is None:
        return "Mixed batches are drawn uniformly from real and synthetic images together. "
    return (f"Each mixed batch element is a real image with probability {fraction:g} and a "
            "synthetic one otherwise (evaluate.mixed_real_fraction). ")


def _finetune_sentence(cfg: dict, settings: list[str]) -> str:
    if "finetuned" not in settings:
        return ""
    pre, fine = finetune_split(cfg["iterations"], cfg["finetune_fraction"])
    return (f"Finetuned: {pre} iterations on the synthetic images, then {fine} on the real ones "
            "(evaluate.finetune_fraction), a fresh optimiser for each. ")


# One function per section of summary.md, all with the same arguments and each returning its
# lines up to and including a closing blank line, so that summary_text only has to join them.

def _intro_section(df: pd.DataFrame, info: dict) -> list[str]:
    """Title, where the "real" images come from, and the training setup."""
    settings: list[str] = info["settings"]
    cfg = info["config"]
    seeds = info["seeds"]
    lines = ["# Evaluation: does the synthetic dataset help a segmenter on real images?", ""]
    if info["source"] == "phantom":
        lines += [
            "**Measured on the built-in phantom**, not on real CAMUS: the \"real\" images are the "
            "CAMUS-like phantom's, so these numbers say whether the pipeline works, not how it does "
            "on patients. They are not comparable with the published references below.", ""]
    else:
        lines += ["Measured on CAMUS (data.source: camus).", ""]
    return lines + [
        f"MONAI 2D U-Net (channels {list(cfg['channels'])}, strides 2), DiceCE loss, Adam lr "
        f"{cfg['lr']}, {cfg['iterations']} iterations of batch {cfg['batch_size']}, identical in "
        f"every setting, trained {len(seeds)} times (segmenter seeds {seeds}); last iterate, no "
        f"model selection. Augmentation: {info['augmentation']}.",
        "",
        "Training images per setting: "
        + ", ".join(f"{s} {info['n_train'][s]}" for s in settings)
        + f" (synthetic: {info['samples_per_mask']:.2g} images per mask on average). "
        + _mixing_sentence(cfg, settings)
        + _finetune_sentence(cfg, settings)
        + f"Real test split: {info['n_test']} frames ({', '.join(info['instants'])}).",
        "",
    ]


def _usefulness_section(df: pd.DataFrame, info: dict) -> list[str]:
    """The headline: Dice(setting) - Dice(real) per structure, then the yes/no verdicts."""
    settings: list[str] = info["settings"]
    structures = list(STRUCTURES)
    lines = ["## Usefulness: synthetic and mixed vs real", ""]
    use = df[df.metric == "usefulness_dice"]
    if use.empty:
        return lines + ["Not computed: it needs the `real` setting and `synthetic`, `mixed` or "
                        "`finetuned`.", ""]
    lines += ["Dice of a segmenter trained on the setting minus Dice of one trained on the real "
              "train split, on the real test split, paired by segmenter seed (mean ± std over "
              "seeds). Negative: the synthetic data teaches less than the real data.", "",
              "| | " + " | ".join(structures) + " |", "|---|" + "---|" * len(structures)]
    for s in USEFULNESS_SETTINGS:
        if s not in settings:
            continue
        rows = [_get(use, setting=s, structure=st) for st in structures]
        lines.append(f"| {s} − real | " + " | ".join(
            f"{r['mean']:+.3f} ± {r['std']:.3f}" if r is not None else "n/a" for r in rows) + " |")
    lines += [""] + [f"- {v}" for v in _usefulness_verdicts(df, use, settings)] + [""]
    if info.get("label_budget_link"):
        lines += [f"How many real labels the synthetic data is worth: the label-budget curve, "
                  f"[{info['label_budget_link']}]({info['label_budget_link']}).", ""]
    return lines


def _usefulness_verdicts(df: pd.DataFrame, use: pd.DataFrame, settings: list[str]) -> list[str]:
    structures = list(STRUCTURES)
    verdicts = []
    for s in ("synthetic", "mixed"):
        if s not in settings:
            continue
        means = [r["mean"] for r in (_get(use, setting=s, structure=st) for st in structures)
                 if r is not None]
        if s == "synthetic" and means:
            ok = all(m >= -0.03 for m in means)
            verdicts.append(f"synthetic-only within 3 Dice points of real on every structure: "
                            f"{'yes' if ok else 'no'} (worst {min(means):+.3f})")
        if s == "mixed" and means:
            ok = all(m >= 0 for m in means)
            verdicts.append(f"mixed at least as good as real on every structure: "
                            f"{'yes' if ok else 'no'} (worst {min(means):+.3f})")
    real_std = [_get(df, setting="real", instant="all", structure=st, metric="dice")
                for st in structures]
    syn_std = [_get(df, setting="synthetic", instant="all", structure=st, metric="dice")
               for st in structures]
    if all(r is not None for r in real_std + syn_std):
        ratio = [b["std"] / a["std"] if a["std"] > 0 else float("inf")
                 for a, b in zip(real_std, syn_std)]
        verdicts.append(f"synthetic-only per-image Dice std at most {SPREAD_LIMIT} times real's: "
                        f"{'yes' if max(ratio) <= SPREAD_LIMIT else 'no'} (ratios "
                        + ", ".join(f"{st} {x:.2f}" for st, x in zip(structures, ratio)) + ")")
    return verdicts


def by_quality(per_image: dict[str, np.ndarray], structures: list[str], quality: np.ndarray
               ) -> dict:
    """Per setting, the test images' Dice (mean over segmenter seeds) by ImageQuality grade, and
    the worst test image's Dice, per structure. ``per_image[s]``: (structures, images)."""
    grades = [g for g in ("Good", "Medium", "Poor") if (quality == g).any()]
    if (~np.isin(quality, grades)).any():
        grades.append("")  # frames without a grade
    return {"structures": structures,
            "grades": [(g, int((quality == g).sum())) for g in grades],
            "mean": {s: {g: d[:, quality == g].mean(axis=1).tolist() for g in grades}
                     for s, d in per_image.items()},
            "worst": {s: d.min(axis=1).tolist() for s, d in per_image.items()}}


def _quality_section(df: pd.DataFrame, info: dict) -> list[str]:
    """Dice by image-quality grade, and each setting's worst test image against real's."""
    q = info.get("by_quality")
    if not q:
        return []
    structures = q["structures"]
    head = ["| trained on | grade (test images) | " + " | ".join(structures) + " |",
            "|---|---|" + "---|" * len(structures)]
    lines = ["## By image quality", "",
             "Dice of the test images of each ImageQuality grade (from metadata.csv), "
             "mean over images of the mean over segmenter seeds. A generator that cannot draw good "
             "(or poor) exams shows as a gap in that grade's row.", "", *head]
    for s in info["settings"]:
        for g, n in q["grades"]:
            lines.append(f"| {s} | {g or 'no grade'} ({n}) | "
                         + " | ".join(f"{v:.3f}" for v in q["mean"][s][g]) + " |")
    lines += ["", "Worst test image (Dice, mean over segmenter seeds):", "",
              "| trained on | " + " | ".join(structures) + " |",
              "|---|" + "---|" * len(structures)]
    for s in info["settings"]:
        lines.append(f"| {s} | " + " | ".join(f"{v:.3f}" for v in q["worst"][s]) + " |")
    if "synthetic" in q["worst"] and "real" in q["worst"]:
        gaps = [a - b for a, b in zip(q["worst"]["synthetic"], q["worst"]["real"])]
        ok = all(g >= -WORST_GAP_LIMIT for g in gaps)
        lines += ["", f"- synthetic-trained segmenter's worst image within {WORST_GAP_LIMIT:.2f} "
                  f"of the real-trained one's worst on every structure: {'yes' if ok else 'no'} "
                  "(" + ", ".join(f"{st} {g:+.3f}" for st, g in zip(structures, gaps)) + ")"]
    return lines + [""]


def _outside_section(df: pd.DataFrame, info: dict) -> list[str]:
    """How much each segmenter predicts far from the structure (another chamber taken for it)."""
    worst = info.get("outside_worst")
    if not worst:
        return []
    structures = list(next(iter(worst.values())))
    lines = ["## Predicted far from the structure", "",
             f"Area a segmenter labels as the structure more than {OUTSIDE_MARGIN_MM:g} mm away "
             "from it (`outside` in metrics.csv), in % of the structure's area: mean over test "
             "images and segmenter seeds, and in brackets the worst test image (mean over seeds). "
             "For the LA this is mostly the right atrium, which CAMUS leaves unlabelled, taken "
             "for the left one.", "",
             "| trained on | " + " | ".join(structures) + " |",
             "|---|" + "---|" * len(structures)]
    for s in info["settings"]:
        cells = []
        for st in structures:
            row = _get(df, setting=s, instant="all", structure=st, metric="outside")
            mean = float("nan") if row is None else row["mean"]
            cells.append(f"{100 * mean:.1f} ({100 * worst[s][st]:.1f})")
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    return lines + [""]


def outside_worst(per_seed: dict[str, list[dict]]) -> dict[str, dict[str, float]]:
    """Per setting and structure, the largest per-image ``outside`` share (mean over seeds)."""
    worst = {}
    for setting, seeds in per_seed.items():
        worst[setting] = {}
        for st in seeds[0]:
            per_image = np.nanmean(np.stack([d[st]["outside"] for d in seeds]), axis=0)
            worst[setting][st] = float(np.nanmax(per_image)) if np.isfinite(per_image).any() \
                else float("nan")
    return worst


def _dice_table_section(df: pd.DataFrame, info: dict) -> list[str]:
    """Our pooled Dice per setting beside the published references, and what worst.png shows."""
    structures = list(STRUCTURES)
    lines = [
        "## Dice on the real test split", "",
        f"Mean over {info['n_test']} images and {len(info['seeds'])} seeds ± std over images; in "
        "brackets the std over seeds of the mean. ED and ES pooled; per instant in metrics.csv and "
        "dice.png, whose lower panel shows every image's Dice.", "",
        "| trained on | " + " | ".join(structures) + " |",
        "|---|" + "---|" * len(structures),
    ]
    for s in info["settings"]:
        cells = []
        for st in structures:
            r = _get(df, setting=s, instant="all", structure=st, metric="dice")
            e = _get(df, setting=s, instant="all", structure=st, metric="dice_seed_std")
            cells.append(f"{_fmt(r['mean'], r['std'])} [{e['mean']:.3f}]"
                         if r is not None and e is not None else "n/a")
        lines.append(f"| {s} (ours) | " + " | ".join(cells) + " |")
    for name, ref in REFERENCES:
        lines.append(f"| {name} | " + " | ".join(f"{ref[st]:.3f}" for st in structures) + " |")
    return lines + ["", f"worst.png shows the real test images the {info['worst_setting']}-trained "
                    "segmenter does worst on, with every setting's prediction.", ""]


def _hd95_section(df: pd.DataFrame, info: dict) -> list[str]:
    """HD95 per setting, and for which settings and structures it was undefined."""
    structures = list(STRUCTURES)
    lines = ["## HD95 on the real test split (mm, ED and ES pooled, all seeds)", "",
             "| trained on | " + " | ".join(structures) + " |",
             "|---|" + "---|" * len(structures)]
    undefined = []
    for s in info["settings"]:
        cells = []
        for st in structures:
            cells.append(_cell(df, 2, setting=s, instant="all", structure=st, metric="hd95"))
            u = _get(df, setting=s, instant="all", structure=st, metric="hd95_undefined")
            if u is not None and u["mean"] > 0:
                undefined.append(f"{s}/{st}: {u['mean']:.1%} of the predictions")
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    lines.append("")
    if undefined:
        return lines + [
            "HD95 is undefined where the prediction of a structure is empty; those images are "
            "left out of the HD95 mean (their Dice, 0, is in the Dice mean). Undefined: "
            + "; ".join(undefined) + ".", ""]
    return lines + ["HD95 was defined for every test image (no empty prediction).", ""]


def _texture_section(df: pd.DataFrame, info: dict) -> list[str]:
    """Grey level and speckle per region, real train vs synthetic."""
    lines = ["## Texture: real train vs synthetic images", "",
             "Per region of the mask, inside the imaging field: grey-level mean and std (mean "
             "± std over images), and speckle as the local coefficient of variation (std / mean "
             "in 5×5 windows, averaged over the region). A synthetic image without speckle has "
             "a much lower value than a real one.", "",
             "| region | mean: real | mean: synthetic | std: real | std: synthetic "
             "| speckle: real | speckle: synthetic |", "|---|---|---|---|---|---|---|"]
    for region in ("LV_cavity", "myocardium", "LA", "outside"):
        cells = [_cell(df, 1 if m != "speckle_cv" else 3, setting=s, structure=region, metric=m)
                 for m in ("intensity_mean", "intensity_std", "speckle_cv")
                 for s in ("real", "synthetic")]
        lines.append(f"| {region} | " + " | ".join(cells) + " |")
    return lines + [""]


def _diversity_section(df: pd.DataFrame, info: dict) -> list[str]:
    """Spread between one mask's samples, of brightness, and in feature space."""
    lines = ["## Diversity", ""]
    w = _get(df, setting="synthetic", metric="within_mask_spread")
    if w is not None and w["n"] > 0:
        lines.append(f"- Between the samples of one mask, outside the labelled structures: "
                     f"pixel-wise std {w['mean']:.1f} ± {w['std']:.1f} grey levels (over "
                     f"{int(w['n'])} masks sampled more than once). 0 means every sample of a "
                     "mask looks the same.")
    else:
        lines.append("- Between the samples of one mask: not measured, no mask was sampled more "
                     "than once (sample.samples_per_mask: 1).")
    b = [_get(df, setting=s, metric="brightness_spread") for s in ("real", "synthetic")]
    if all(x is not None for x in b):
        lines.append(f"- Spread of the mean grey level (gain, grey map) over images: real "
                     f"{b[0]['mean']:.1f}, synthetic {b[1]['mean']:.1f}.")
    fsp = [_get(df, setting=s, metric="feature_spread_segfeat") for s in ("real", "synthetic")]
    if all(x is not None for x in fsp):
        lines.append(f"- Spread of the images in the real segmenter's feature space (root mean "
                     f"variance): real {fsp[0]['mean']:.3g}, synthetic {fsp[1]['mean']:.3g}.")
    return lines + [""]


def _fidelity_distance_section(df: pd.DataFrame, info: dict) -> list[str]:
    """Label fidelity and the feature distances (both need the `real` segmenter), then the
    standard FID."""
    lines = ["## Label fidelity and distribution distance", ""]
    if "real" in info["settings"]:
        lines += _fidelity_distance_lines(df, info)
    else:
        lines.append("Not computed: label fidelity, Fréchet distance and KID need the `real` "
                     "setting, which is not in evaluate.settings.")
    return lines + ["", _inception_fid_sentence(df), ""]


def _fidelity_distance_lines(df: pd.DataFrame, info: dict) -> list[str]:
    cells = [f"{st} {_cell(df, setting='synthetic', instant='all', structure=st, metric='label_fidelity_dice')}"
             for st in STRUCTURES]
    lines = [
        f"Label fidelity (the `real` segmenter on the {info['n_synthetic']} synthetic images, "
        "Dice against the masks that conditioned them): " + ", ".join(cells) + ". A high "
        "value does not mean the images are useful for training (a segmenter trained on real "
        "images reads easy, clean images well).",
        "",
        "Distances on the `real` segmenter's encoder features (global-average-pooled "
        "bottleneck). The synthetic images are made from train masks, so the real test split "
        "is the unbiased reference; the other real split gives the level of two samples of "
        "the same distribution:",
        "",
        "| compared set | FD vs real train | KID vs real train | FD vs real test "
        "| KID vs real test |",
        "|---|---|---|---|---|",
    ]
    for label, s_train, s_test in (("synthetic", "synthetic", "synthetic"),
                                   ("real (reference)", "real_test", "real")):
        fd = _get(df, setting=s_train, metric="frechet_distance_segfeat")
        kd = _get(df, setting=s_train, metric="kid_segfeat")
        fdt = _get(df, setting=s_test, metric="frechet_distance_segfeat_test")
        kdt = _get(df, setting=s_test, metric="kid_segfeat_test")
        if all(x is not None for x in (fd, kd, fdt, kdt)):
            lines.append(f"| {label} | {fd['mean']:.4g} | {kd['mean']:.3g} ± {kd['std']:.2g} "
                         f"| {fdt['mean']:.4g} | {kdt['mean']:.3g} ± {kdt['std']:.2g} |")
    return lines + ["", "These features come from a small segmenter trained on few images, not an "
                    "ImageNet network: compare values within this project, not with published "
                    "FIDs."]


def _inception_fid_sentence(df: pd.DataFrame) -> str:
    fid = df[df.metric.isin(["fid_inception", "fid_inception_test"])]
    if fid.empty:
        return ("The standard FID (Inception-v3) was not computed: evaluate.inception_weights "
                "does not name a local pytorch-fid Inception weights file (nothing is "
                "downloaded).")
    parts = [f"{r.setting} vs real {'test' if r.metric.endswith('test') else 'train'} "
             f"{r['mean']:.4g}" for _, r in fid.iterrows()]
    return "Standard FID (pytorch-fid Inception-v3 pool3 features): " + ", ".join(parts) + "."


_SECTIONS = (_intro_section, _usefulness_section, _quality_section, _outside_section,
             _dice_table_section,
             _hd95_section, _texture_section, _diversity_section, _fidelity_distance_section)


def summary_text(df: pd.DataFrame, info: dict) -> str:
    """summary.md: usefulness headline, Dice over seeds, worst images, HD95, texture, diversity,
    label fidelity and feature distances."""
    return "\n".join(line for section in _SECTIONS for line in section(df, info))
