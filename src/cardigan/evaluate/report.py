"""The evaluation's outputs: tidy metrics.csv, the Dice bar chart and summary.md.

All three are byte-reproducible: fixed row order, fixed float format, no timestamps, and PNG
metadata without the matplotlib version.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from ..labels import STRUCTURES  # noqa: E402

COLUMNS = ["setting", "instant", "structure", "metric", "mean", "std", "n"]

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


def plot_dice(df: pd.DataFrame, settings: list[str], instants: list[str], path: str | Path) -> None:
    """Grouped bars of test Dice (mean ± std): one panel per instant, structures x settings."""
    structures = list(STRUCTURES)
    dice = df[(df.metric == "dice") & df.setting.isin(settings)]
    fig, axes = plt.subplots(1, len(instants), figsize=(4.2 * len(instants), 3.6), sharey=True,
                             squeeze=False)
    width = 0.8 / len(settings)
    colours = plt.get_cmap("tab10")
    for ax, instant in zip(axes[0], instants):
        sub = dice[dice.instant == instant]
        for k, setting in enumerate(settings):
            rows = sub[sub.setting == setting].set_index("structure").reindex(structures)
            xs = [i - 0.4 + width * (k + 0.5) for i in range(len(structures))]
            ax.bar(xs, rows["mean"].fillna(0), width, yerr=rows["std"].fillna(0), capsize=3,
                   color=colours(k), label=setting)
        ax.set_xticks(range(len(structures)), structures)
        ax.set_ylim(0, 1.05)
        ax.set_title(f"{instant}" if instant != "all" else "ED and ES pooled")
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("Dice on the real test split")
    axes[0][-1].legend(title="trained on", loc="lower right", fontsize=8)
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


def summary_text(df: pd.DataFrame, info: dict) -> str:
    """summary.md: headline Dice table, references, HD95, label fidelity, distances, caveats."""
    settings: list[str] = info["settings"]
    structures = list(STRUCTURES)
    cfg = info["config"]
    lines = ["# Evaluation: does the synthetic dataset help a segmenter on real images?", ""]
    if info["source"] == "phantom":
        lines += [
            "**Measured on the built-in phantom**, not on real CAMUS: the \"real\" images are the "
            "CAMUS-like phantom's, so these numbers say whether the pipeline works, not how it does "
            "on patients. They are not comparable with the published references below.", ""]
    else:
        lines += ["Measured on CAMUS (data.source: camus).", ""]
    lines += [
        f"MONAI 2D U-Net (channels {list(cfg['channels'])}, strides 2), DiceCE loss, Adam lr "
        f"{cfg['lr']}, {cfg['iterations']} iterations of batch {cfg['batch_size']}, seed "
        f"{cfg['seed']}, identical in every setting; last iterate, no model selection. "
        f"Augmentation: {info['augmentation']}.",
        "",
        "Training images per setting: "
        + ", ".join(f"{s} {info['n_train'][s]}" for s in settings)
        + f". Real test split: {info['n_test']} frames ({', '.join(info['instants'])}).",
        "",
        "## Dice on the real test split (ED and ES pooled, mean ± std over images)",
        "",
        "| trained on | " + " | ".join(structures) + " |",
        "|---|" + "---|" * len(structures),
    ]
    for s in settings:
        cells = []
        for st in structures:
            r = _get(df, setting=s, instant="all", structure=st, metric="dice")
            cells.append(_fmt(r["mean"], r["std"]) if r is not None else "n/a")
        lines.append(f"| {s} (ours) | " + " | ".join(cells) + " |")
    for name, ref in REFERENCES:
        lines.append(f"| {name} | " + " | ".join(f"{ref[st]:.3f}" for st in structures) + " |")
    lines += ["", "Per instant (ED / ES) in metrics.csv and dice.png.", "",
              "## HD95 on the real test split (mm, ED and ES pooled)", "",
              "| trained on | " + " | ".join(structures) + " |",
              "|---|" + "---|" * len(structures)]
    undefined = []
    for s in settings:
        cells = []
        for st in structures:
            r = _get(df, setting=s, instant="all", structure=st, metric="hd95")
            cells.append(_fmt(r["mean"], r["std"], 2) if r is not None else "n/a")
            u = _get(df, setting=s, instant="all", structure=st, metric="hd95_undefined")
            if u is not None and u["mean"] > 0:
                undefined.append(f"{s}/{st}: {round(u['mean'] * u['n'])} of {u['n']}")
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    lines.append("")
    if undefined:
        lines += ["HD95 is undefined where the prediction of a structure is empty; those images are "
                  "left out of the HD95 mean (their Dice, 0, is in the Dice mean). Undefined: "
                  + "; ".join(undefined) + ".", ""]
    else:
        lines += ["HD95 was defined for every test image (no empty prediction).", ""]

    lines += ["## Label fidelity and distribution distance", ""]
    if "real" in settings:
        cells = []
        for st in structures:
            r = _get(df, setting="synthetic", instant="all", structure=st, metric="label_fidelity_dice")
            cells.append(f"{st} {_fmt(r['mean'], r['std'])}" if r is not None else f"{st} n/a")
        lines += [
            f"Label fidelity (the `real` segmenter on the {info['n_synthetic']} synthetic images, "
            "Dice against the masks that conditioned them): " + ", ".join(cells) + ".",
            "",
            "Distances on the `real` segmenter's encoder features (global-average-pooled "
            "bottleneck), against the real train split; the real test split gives the "
            "reference level of two samples of the same distribution:",
            "",
            "| compared with real train | Fréchet distance | KID (mean ± std over subsets) |",
            "|---|---|---|",
        ]
        for s, label in (("synthetic", "synthetic"), ("real", "real test (reference)")):
            fd = _get(df, setting=s, instant="all", structure="all", metric="frechet_distance_segfeat")
            kd = _get(df, setting=s, instant="all", structure="all", metric="kid_segfeat")
            if fd is not None and kd is not None:
                lines.append(f"| {label} | {fd['mean']:.4g} | {kd['mean']:.3g} ± {kd['std']:.2g} |")
        lines.append("")
        lines.append("These features come from a small segmenter trained on few images, not an "
                     "ImageNet network: compare values within this project, not with published FIDs.")
    else:
        lines.append("Not computed: label fidelity, Fréchet distance and KID need the `real` "
                     "setting, which is not in evaluate.settings.")
    lines.append("")
    fid = df[df.metric == "fid_inception"]
    if fid.empty:
        lines.append("The standard FID (Inception-v3) was not computed: evaluate.inception_weights "
                     "does not name a local pytorch-fid Inception weights file (nothing is "
                     "downloaded).")
    else:
        parts = [f"{'synthetic' if r.setting == 'synthetic' else 'real test (reference)'} "
                 f"{r['mean']:.4g}" for _, r in fid.iterrows()]
        lines.append("Standard FID (pytorch-fid Inception-v3 pool3 features, against real train): "
                     + ", ".join(parts) + ".")
    lines.append("")
    return "\n".join(lines)
