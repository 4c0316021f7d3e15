"""The label-budget curve: Dice on the real test split against the real patients used, per arm,
and what the synthetic data is worth in real labels.

Each budget's evaluate folder holds a metrics.csv like the main evaluation's; the curve reads
the pooled Dice ("dice", mean over test images and segmenter seeds) and its spread over
segmenter seeds ("dice_seed_std") of every arm.

The label saving at budget B: the best synthetic arm at B (highest Dice), and the real-only
budget that reaches the same Dice, read off the real-only curve by interpolation that is linear
in log(patients) (learning curves are close to straight there). It is "not resolved" where the
arm's band (mean ± std over segmenter seeds) overlaps real-only's at B; the saving is then too
small for the seeds to tell apart from none.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cardigan.core.atomic import atomic_outputs
from cardigan.core.labels import STRUCTURES
from cardigan.core.plots import PNG_METADATA, plt
from cardigan.evaluate.stage import SETTINGS as ARMS

ARM_LABELS = {"real": "real only", "synthetic": "synthetic only", "mixed": "mixed (real + synthetic)",
              "finetuned": "pretrained on synthetic, fine-tuned on real"}
ARM_COLOURS = {"real": "black", "synthetic": "tab:orange", "mixed": "tab:blue",
               "finetuned": "tab:green"}
MEAN = "mean"  # the structure name of the mean over structures


def load_curve(metrics: Mapping[int, str | Path]) -> pd.DataFrame:
    """Rows (patients, arm, structure, mean, std, seeds) from each budget's metrics.csv
    (``metrics``: patients -> path), with the mean over structures as structure "mean" (its std:
    the mean of the structures' stds, an upper bound of the std of the mean)."""
    rows = []
    for patients, path in sorted(metrics.items()):
        df = pd.read_csv(path)
        pooled = df[(df.instant == "all") & df.structure.isin(STRUCTURES)]
        for arm in ARMS:
            dice = pooled[(pooled.setting == arm) & (pooled.metric == "dice")]
            spread = pooled[(pooled.setting == arm) & (pooled.metric == "dice_seed_std")]
            if dice.empty:
                raise ValueError(f"{path}: no Dice of the {arm!r} setting: the label-budget "
                                 f"evaluation runs every arm ({', '.join(ARMS)})")
            for st in STRUCTURES:
                rows.append(dict(patients=int(patients), arm=arm, structure=st,
                                 mean=float(dice.loc[dice.structure == st, "mean"].iloc[0]),
                                 std=float(spread.loc[spread.structure == st, "mean"].iloc[0]),
                                 seeds=int(spread.loc[spread.structure == st, "n"].iloc[0])))
    curve = pd.DataFrame(rows)
    means = (curve.groupby(["patients", "arm"], sort=False)
             .agg(mean=("mean", "mean"), std=("std", "mean"), seeds=("seeds", "min"))
             .reset_index().assign(structure=MEAN))
    return pd.concat([curve, means[curve.columns]], ignore_index=True)


@dataclass(frozen=True)
class Saving:
    """At ``patients``: the best synthetic arm, its Dice and real-only's, and the real-only
    patients it matches (None: not resolved, below real-only, or beyond the curve's end)."""

    structure: str
    patients: int
    arm: str
    dice: float
    real_dice: float
    verdict: str  # "saves", "not resolved", "below real-only", "beyond the full split"
    equivalent: float | None

    def sentence(self) -> str:
        what = f"{self.arm} with {self.patients} patients ({self.dice:.3f}; real only {self.real_dice:.3f})"
        if self.verdict == "saves":
            return (f"{what} ≈ real only with {self.equivalent:.0f} patients "
                    f"({self.equivalent / self.patients:.1f}× the labels)")
        if self.verdict == "beyond the full split":
            return f"{what}: better than real only with every train patient"
        return f"{what}: {self.verdict}"


def equivalent_patients(patients: np.ndarray, dice: np.ndarray, target: float,
                        start: int) -> float | None:
    """The first point at or after ``start`` where the real-only curve (``patients`` ascending,
    ``dice``) reaches ``target``, interpolated linearly in log(patients); None if it never does."""
    for (p0, d0), (p1, d1) in zip(zip(patients, dice), zip(patients[1:], dice[1:])):
        if p0 < start or d1 < target:
            continue
        if d0 >= target:
            return float(p0)
        t = (target - d0) / (d1 - d0)
        return float(math.exp(math.log(p0) + t * (math.log(p1) - math.log(p0))))
    return None


def label_savings(curve: pd.DataFrame, structure: str) -> list[Saving]:
    """One :class:`Saving` per budget, for one structure (or "mean"). At the full split (the last
    point) there is no larger real-only budget to match: the verdict only says whether the best
    synthetic arm is above, below or not resolved from real only."""
    sub = curve[curve.structure == structure]
    real = sub[sub.arm == "real"].sort_values("patients")
    p, d = real.patients.to_numpy(), real["mean"].to_numpy()
    out = []
    for budget in p:
        at = sub[(sub.patients == budget) & (sub.arm != "real")]
        best = at.loc[at["mean"].idxmax()]
        ref = real[real.patients == budget].iloc[0]
        equivalent = None
        if abs(best["mean"] - ref["mean"]) <= best["std"] + ref["std"]:
            verdict = "not resolved"
        elif best["mean"] < ref["mean"]:
            verdict = "below real-only"
        else:
            equivalent = equivalent_patients(p, d, float(best["mean"]), int(budget))
            verdict = "saves" if equivalent is not None else "beyond the full split"
        out.append(Saving(structure, int(budget), str(best.arm), float(best["mean"]),
                          float(ref["mean"]), verdict, equivalent))
    return out


def plot_curve(curve: pd.DataFrame, full_patients: int, path: str | Path) -> None:
    """Dice against real patients used, per structure, one line per arm with a ± std band."""
    structures = [*STRUCTURES, MEAN]
    fig, axes = plt.subplots(1, len(structures), figsize=(4.2 * len(structures), 3.8),
                             sharex=True)
    budgets = sorted(curve.patients.unique())
    for ax, st in zip(axes, structures):
        for arm in ARMS:
            line = curve[(curve.structure == st) & (curve.arm == arm)].sort_values("patients")
            x, m, s = line.patients.to_numpy(), line["mean"].to_numpy(), line["std"].to_numpy()
            ax.plot(x, m, "o-", color=ARM_COLOURS[arm], label=ARM_LABELS[arm], lw=1.5, ms=4)
            ax.fill_between(x, m - s, m + s, color=ARM_COLOURS[arm], alpha=0.18, lw=0)
        ax.set_xscale("log")
        ax.set_xticks(budgets)
        ax.set_xticklabels([f"{b}" + (" (all)" if b == full_patients else "") for b in budgets])
        ax.minorticks_off()
        ax.set_title("mean over structures" if st == MEAN else st)
        ax.set_xlabel("real train patients used")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("Dice on the real test split")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(ARMS), fontsize=8, frameon=False)
    fig.suptitle("Label budget: mean ± std over segmenter seeds", fontsize=10)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path, dpi=110, metadata=PNG_METADATA)
    plt.close(fig)


def summary_text(curve: pd.DataFrame, subsets: Mapping[int, list[str]], full_patients: int,
                 iterations: Mapping[int, int]) -> str:
    """summary.md of the curve: setup, the Dice table, the label savings and where the synthetic
    data does not help."""
    structures = [*STRUCTURES, MEAN]
    seeds = int(curve.seeds.min())
    lines = ["# Label budget: what the synthetic data is worth in real labels", "",
             "Each budget trains its own GAN on its patients only (the full split reuses the "
             "default run's), samples its synthetic set from their masks, and trains U-Nets on "
             f"four arms, {seeds} segmenter seeds each, all tested on the full real test split. "
             "Subsets are nested and stratified by image quality (`label_budget.seed`).", "",
             "![label budget](label_budget.png)", "", "## Dice on the real test split", "",
             "Mean ± std over segmenter seeds.", "",
             "| patients | arm | " + " | ".join(structures) + " |",
             "|---:|---|" + "---|" * len(structures)]
    for patients in sorted(curve.patients.unique()):
        for arm in ARMS:
            cells = []
            for st in structures:
                r = curve[(curve.patients == patients) & (curve.arm == arm)
                          & (curve.structure == st)].iloc[0]
                cells.append(f"{r['mean']:.3f} ± {r['std']:.3f}")
            name = f"{patients} (all)" if patients == full_patients else str(patients)
            lines.append(f"| {name} | {arm} | " + " | ".join(cells) + " |")
    lines += ["", "## Label saving", "",
              "For each budget, the best synthetic arm and the real-only budget with the same "
              "Dice (interpolated linearly in log patients); \"not resolved\" where the two bands "
              "overlap at that budget.", ""]
    unhelpful = []
    for st in structures:
        for s in label_savings(curve, st):
            lines.append(f"- {'mean over structures' if st == MEAN else st}: {s.sentence()}")
            if s.verdict == "below real-only":
                unhelpful.append(f"{st} at {s.patients} patients")
    lines += ["", "## Where the synthetic data does not help", ""]
    lines.append("- Every synthetic arm is below real only for: " + ", ".join(unhelpful) + "."
                 if unhelpful else "- No budget where the best synthetic arm is below real only.")
    lines += ["", "## Subsets and training", ""]
    for patients, chosen in sorted(subsets.items()):
        lines.append(f"- {patients} patients ({iterations[patients]} GAN iterations): "
                     + ", ".join(chosen))
    lines += [f"- {full_patients} patients (all, {iterations[full_patients]} GAN iterations): the "
              "default run's GAN and synthetic set", "",
              "Each budget's own evaluation (texture, label fidelity, worst images) is in "
              "`<patients>/evaluate/summary.md`.", ""]
    return "\n".join(lines)


def write_curve(metrics: Mapping[int, str | Path], subsets: Mapping[int, list[str]],
                full_patients: int, iterations: Mapping[int, int], curve_png: str | Path,
                curve_csv: str | Path, summary_md: str | Path) -> pd.DataFrame:
    """Read every budget's metrics and write the curve's table, plot and summary (all or none)."""
    curve = load_curve(metrics)
    if full_patients not in set(curve.patients):
        raise ValueError(f"the curve has no point for the full split's {full_patients} patients")
    with atomic_outputs([Path(curve_png), Path(curve_csv), Path(summary_md)]) as (png, csv, md):
        plot_curve(curve, full_patients, png)
        curve.to_csv(csv, index=False, float_format="%.6g", lineterminator="\n")
        md.write_text(summary_text(curve, subsets, full_patients, iterations))
    return curve
