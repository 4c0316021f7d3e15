"""The label-budget curve: nested, stratified subsets; a budget's GAN trained as long as the full
split's; the finetuned arm; the label saving read off the real-only curve."""

from __future__ import annotations

import h5py
import numpy as np
import pandas as pd
import pytest
from train_fixtures import write_split

from cardigan.core import layout
from cardigan.evaluate import runs, segmenter
from cardigan.evaluate.data import ImageSet
from cardigan.gan.train_config import TrainConfig
from cardigan.label_budget.curve import MEAN, equivalent_patients, label_savings, load_curve
from cardigan.label_budget.subsets import (
    budget_patients,
    patient_grades,
    patient_order,
    read_budget_patients,
    write_budget_data,
)
from cardigan.label_budget.training import budget_config

GRADES = {**{f"g{i:02d}": "Good" for i in range(10)}, **{f"m{i:02d}": "Medium" for i in range(6)},
          **{f"p{i:02d}": "Poor" for i in range(4)}}


def test_every_prefix_of_the_order_holds_each_grade_in_its_share():
    order = patient_order(GRADES, seed=3)
    assert sorted(order) == sorted(GRADES)
    for budget in range(1, len(order) + 1):
        held = pd.Series([GRADES[p] for p in order[:budget]]).value_counts()
        for grade, n in pd.Series(GRADES).value_counts().items():
            share = budget * n / len(GRADES)
            assert np.floor(share) - 1 < held.get(grade, 0) < np.ceil(share) + 1, (budget, grade)


def test_the_order_is_the_seeds():
    assert patient_order(GRADES, seed=0) == patient_order(dict(reversed(GRADES.items())), seed=0)
    assert patient_order(GRADES, seed=0) != patient_order(GRADES, seed=1)


def test_budgets_are_nested_and_below_the_split():
    order = patient_order(GRADES, seed=0)
    assert set(budget_patients(order, 5)) < set(budget_patients(order, 10))
    with pytest.raises(ValueError, match="label_budget.patients: 20 is not between 1 and the "
                                         "train split's 20 patients"):
        budget_patients(order, 20)


def test_a_patient_takes_the_worst_grade_of_its_views():
    meta = pd.DataFrame(dict(patient=["a", "a", "b", "b"], view=["2CH", "4CH", "2CH", "4CH"],
                             image_quality=["Good", "Poor", "Medium", ""]))
    assert patient_grades(meta, ["a", "b"], ["2CH", "4CH"]) == {"a": "Poor", "b": "Medium"}
    assert patient_grades(meta, ["a", "b"], ["4CH"]) == {"a": "Poor", "b": ""}


def _extracted(tmp_path, patients=8):
    data = tmp_path / "data"
    write_split(data, patients=patients, size=16)
    write_split(data, patients=2, size=16, split="test", first=patients + 1)
    rows = [dict(patient=f"patient{p:04d}", view="4CH", instant=i,
                 split="train" if p <= patients else "test",
                 image_quality=("Good", "Medium", "Poor")[p % 3])
            for p in range(1, patients + 3) for i in ("ED", "ES")]
    pd.DataFrame(rows).to_csv(data / "metadata.csv", index=False)
    return data


def test_a_budget_is_an_extracted_train_split_of_its_own(tmp_path):
    data = _extracted(tmp_path)
    out = tmp_path / "budget"
    chosen = write_budget_data(data, out, ["4CH"], budget=3, seed=0)
    assert len(chosen) == 3 and read_budget_patients(out / layout.BUDGET_PATIENTS) == chosen
    images, annos = layout.extracted(["train"], ["4CH"], data_dir=str(out))
    with h5py.File(images) as fi, h5py.File(data / "train_4CH.h5") as src:
        assert sorted({k.split("_")[0] for k in fi}) == sorted(chosen)
        assert len(fi) == 6
        for key in fi:  # the frames and their attributes, unchanged
            np.testing.assert_array_equal(fi[key][()], src[key][()])
            np.testing.assert_array_equal(fi[key].attrs["spacing"], src[key].attrs["spacing"])
    with h5py.File(annos) as fa:
        assert len(fa) == 6
    meta = pd.read_csv(out / "metadata.csv")
    assert set(meta.patient) == set(chosen) and set(meta.split) == {"train"}
    # a larger budget of the same seed holds the smaller one
    assert set(chosen) < set(write_budget_data(data, tmp_path / "b5", ["4CH"], budget=5, seed=0))


def test_a_budget_as_large_as_the_split_writes_nothing(tmp_path):
    data = _extracted(tmp_path)
    with pytest.raises(ValueError, match="label_budget.patients: 8 "):
        write_budget_data(data, tmp_path / "budget", ["4CH"], budget=8, seed=0)
    assert not list((tmp_path / "budget").glob("*"))


def test_a_budget_trains_as_many_iterations_as_the_full_split():
    cfg = TrainConfig.from_dict({"epochs": 22, "batch_size": 2, "sample_every": 10})
    scaled = budget_config(cfg, budget_frames=10, full_frames=80)
    assert (scaled.epochs, scaled.sample_every) == (176, 80)  # 176 x 5 = 22 x 40 iterations
    odd = budget_config(cfg, budget_frames=7, full_frames=80)  # 3 iterations an epoch
    assert odd.epochs * 3 >= 880 > (odd.epochs - 1) * 3
    with pytest.raises(ValueError, match="label budget of 1 frames"):
        budget_config(cfg, budget_frames=1, full_frames=80)


def test_finetune_split_keeps_the_iterations():
    assert runs.finetune_split(400, 0.5) == (200, 200)
    assert runs.finetune_split(400, 0.25) == (300, 100)
    assert runs.finetune_split(2, 0.99) == (1, 1)
    with pytest.raises(ValueError, match="evaluate.iterations: 1"):
        runs.finetune_split(1, 0.5)


def _images(n, value):
    return ImageSet(np.full((n, 16, 16), value, np.uint8), np.zeros((n, 16, 16), np.uint8),
                    np.ones((n, 2)), np.array(["ED"] * n), np.array(["4CH"] * n),
                    np.array([str(i) for i in range(n)]), np.array([""] * n))


def test_the_finetuned_arm_pretrains_on_synthetic_then_trains_the_same_network_on_real(
        monkeypatch):
    calls = []
    real_train = segmenter.train_segmenter

    def spy(images, masks, **kw):
        calls.append((int(images[0, 0, 0]), kw["iterations"], kw.get("start_from")))
        return real_train(images, masks, **kw)

    monkeypatch.setattr(segmenter, "train_segmenter", spy)
    real, synth = _images(4, 10), _images(6, 200)
    cfg = dict(iterations=6, finetune_fraction=0.5, batch_size=2, lr=1e-3, channels=[4, 8])
    inputs = runs._Inputs({"real": real, "synthetic": synth}, real, cfg, None, "cpu")
    seg = runs._train(runs.Job("finetuned", 0, False), inputs)
    (first, n1, start1), (second, n2, start2) = calls
    assert (first, n1, start1) == (200, 3, None)  # synthetic images first
    assert (second, n2) == (10, 3) and start2 is seg.model  # then the same network on real
    assert len(seg.losses) == 6


def _curve(values: dict[tuple[int, str], tuple[float, float]]) -> pd.DataFrame:
    return pd.DataFrame([dict(patients=p, arm=a, structure=MEAN, mean=m, std=s, seeds=3)
                         for (p, a), (m, s) in values.items()])


def test_equivalent_patients_interpolates_in_log_patients():
    p, d = np.array([5, 10, 20, 40]), np.array([0.6, 0.7, 0.8, 0.85])
    assert equivalent_patients(p, d, 0.75, start=5) == pytest.approx(np.sqrt(10 * 20))
    assert equivalent_patients(p, d, 0.8, start=5) == pytest.approx(20)
    assert equivalent_patients(p, d, 0.9, start=5) is None


def test_label_savings_say_saves_not_resolved_below_and_beyond():
    real = {(5, "real"): (0.60, 0.01), (10, "real"): (0.70, 0.01), (20, "real"): (0.80, 0.01),
            (40, "real"): (0.85, 0.01)}
    arms = {(5, "mixed"): (0.75, 0.01), (5, "synthetic"): (0.50, 0.01),  # saves: ~14 patients
            (10, "mixed"): (0.71, 0.01), (10, "synthetic"): (0.60, 0.01),  # bands overlap
            (20, "mixed"): (0.70, 0.01), (20, "synthetic"): (0.60, 0.01),  # below real-only
            (40, "mixed"): (0.86, 0.01), (40, "synthetic"): (0.80, 0.01)}
    savings = label_savings(_curve({**real, **arms}), MEAN)
    assert [(s.patients, s.arm, s.verdict) for s in savings] == [
        (5, "mixed", "saves"), (10, "mixed", "not resolved"), (20, "mixed", "below real-only"),
        (40, "mixed", "not resolved")]
    assert savings[0].equivalent == pytest.approx(np.sqrt(200))
    assert "≈ real only with 14 patients (2.8× the labels)" in savings[0].sentence()
    beyond = label_savings(_curve({**real, **arms, (20, "mixed"): (0.95, 0.01)}), MEAN)
    assert beyond[2].verdict == "beyond the full split"
    above_all = label_savings(_curve({**real, **arms, (40, "mixed"): (0.95, 0.01)}), MEAN)
    assert above_all[3].sentence().endswith("better than real only with every train patient")


def test_the_curve_needs_every_arm(tmp_path):
    rows = [dict(setting=s, instant="all", structure=st, metric=m, mean=0.5, std=0.1, n=3)
            for s in ("real", "synthetic", "mixed") for st in ("LV_endo", "LV_epi", "LA")
            for m in ("dice", "dice_seed_std")]
    pd.DataFrame(rows).to_csv(tmp_path / "metrics.csv", index=False)
    with pytest.raises(ValueError, match="no Dice of the 'finetuned' setting"):
        load_curve({5: tmp_path / "metrics.csv"})
