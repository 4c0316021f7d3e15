"""The export in the tools people train segmenters with: nnU-Net v2 folds without patient leakage
(checked by nnunetv2 itself when it is installed), MONAI transforms and losses on the datasets, and
sampling from a folder of PNG masks with nothing but the trained generator file."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image
from train_fixtures import synthetic_frame, write_split

import cardigan
from cardigan.cli import main as cli_main
from cardigan.core.config import validate
from cardigan.data.dataset import ExtractedDataset, SyntheticDataset, grouped_split
from cardigan.data.masks import load_extracted_masks
from cardigan.data.plausibility import AreaRanges
from cardigan.export.nnunet import run_nnunet
from cardigan.export.provenance import provenance
from cardigan.export.stage import run_export
from cardigan.gan.generator_file import load_generator, save_generator
from cardigan.gan.train import train
from cardigan.gan.train_config import TrainConfig
from cardigan.synth.sample import run_sample

SIZE = 64
FOLDS = 5
TRAIN_PATIENTS, TEST_PATIENTS = 7, 2
TINY = dict(epochs=1, batch_size=4, ngf=4, ndf=4, spade_hidden=8, num_D=2, n_layers_D=2,
            z_dim=8, use_vae=True, log_every=1, checkpoint_every=100, sample_every=1, device="cpu")
EXPORT = {"formats": ["h5", "nnunet"], "include_real": True,
          "nnunet": {"dataset_id": 7, "name": "Toy", "folds": FOLDS, "test_split": True}}
SAMPLE = {"samples_per_mask": 2, "batch_size": 8, "seed": 0, "device": "cpu", "mask_path": None,
          "own_styles": 0, "style_source": "real",
          "augment": {"n": 1, "elastic_alpha": 3.0, "elastic_sigma": 8.0, "max_tries": 20}}


# Validated (every key present), as the stages get it.
PROVENANCE = validate({"data": {"image_size": SIZE}, "train": TINY, "sample": SAMPLE,
                       "export": EXPORT})


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """extract-like data -> train (one epoch, VAE) -> sample -> export, all tiny."""
    root = tmp_path_factory.mktemp("downstream")
    data = root / "data"
    train_files = write_split(data, patients=TRAIN_PATIENTS, size=SIZE)
    test_files = write_split(data, patients=TEST_PATIENTS, size=SIZE, split="test", seed=1,
                             first=101)
    torch.manual_seed(0)
    train(images_h5=[train_files[0]], annos_h5=[train_files[1]], out_dir=root / "train",
          state_dir=root / "state", cfg=TrainConfig.from_dict(TINY), image_size=SIZE, threads=1,
          progress=False)
    generator = root / "train" / "generator.pt"
    run_sample(generator, [train_files[1]], [train_files[1]], SAMPLE, root / "samples.h5")
    out = root / "export"
    outputs = {"h5": out / "synthetic.h5", "preview": out / "preview.png",
               "card": out / "dataset_card.md", "nnunet": out / "nnunet" / "Dataset007_Toy",
               "datalist": out / "datalist.json"}
    out.mkdir()
    run_export(root / "samples.h5", generator, [train_files[0]], [train_files[1]],
               provenance(PROVENANCE), outputs)
    # what the workflow's nnunet rule does
    run_nnunet(outputs["h5"], outputs["nnunet"], outputs["datalist"], EXPORT["nnunet"],
               [test_files[0]], [test_files[1]])
    return root


def cases(folder: Path) -> list[dict]:
    with open(folder / "cases.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_splits_keep_every_source_patient_in_one_fold(built):
    folder = built / "export" / "nnunet" / "Dataset007_Toy"
    splits = json.loads((folder / "splits_final.json").read_text())
    rows = cases(folder)
    train_rows = [r for r in rows if r["subset"] == "train"]
    patient = {r["case"]: r["source_patient"] for r in train_rows}
    all_cases = set(patient)
    assert len(splits) == FOLDS
    val_fold_of: dict[str, set[int]] = {}
    for k, split in enumerate(splits):
        assert set(split["train"]) | set(split["val"]) == all_cases
        assert not set(split["train"]) & set(split["val"]) and split["val"]
        for c in split["val"]:
            val_fold_of.setdefault(patient[c], set()).add(k)
        # no source patient on both sides of this fold
        assert not {patient[c] for c in split["train"]} & {patient[c] for c in split["val"]}
    assert len(val_fold_of) == TRAIN_PATIENTS
    assert all(len(f) == 1 for f in val_fold_of.values())
    # synthetic styles and deformations and the real frames of a patient are all there, together
    with h5py.File(built / "export" / "synthetic.h5") as f:
        assert len(all_cases) == f["images"].shape[0]
        assert f["variant"][()].max() == 1 and (~f["is_synthetic"][()]).sum() == 2 * TRAIN_PATIENTS
    assert {r["fold"] for r in train_rows if r["source_patient"] == "patient0001"} \
        == {str(k) for k in val_fold_of["patient0001"]}
    # the real test split, held out
    test_rows = [r for r in rows if r["subset"] == "test"]
    assert len(test_rows) == 2 * TEST_PATIENTS
    assert {r["source_patient"] for r in test_rows} == {"patient0101", "patient0102"}
    assert sorted(p.name for p in (folder / "imagesTs").iterdir()) == \
        [f"test_{i:06d}_0000.nii.gz" for i in range(2 * TEST_PATIENTS)]
    assert len(list((folder / "labelsTs").iterdir())) == 2 * TEST_PATIENTS
    card = (built / "export" / "dataset_card.md").read_text()
    assert "inherits the CAMUS terms of use" in card
    assert "Leclerc" in card and "Park" in card and "splits_final.json" in card


def test_monai_datalist(built):
    from monai.data import load_decathlon_datalist
    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged

    path = built / "export" / "datalist.json"
    training = load_decathlon_datalist(str(path), data_list_key="training")
    testing = load_decathlon_datalist(str(path), data_list_key="testing")
    folder = built / "export" / "nnunet" / "Dataset007_Toy"
    fold_of = {r["case"]: int(r["fold"]) for r in cases(folder) if r["subset"] == "train"}
    assert {e["case"]: e["fold"] for e in training} == fold_of
    assert len(testing) == 2 * TEST_PATIENTS
    load = Compose([LoadImaged(keys=["image", "label"]), EnsureChannelFirstd(keys=["image", "label"])])
    for entry in (training[0], testing[-1]):
        assert Path(entry["image"]).is_file() and Path(entry["label"]).is_file()
        item = load(entry)
        assert item["image"].shape == item["label"].shape == (1, SIZE, SIZE)
        assert set(np.unique(item["label"].numpy()).tolist()) <= {0, 1, 2, 3}


def _nnunet_python() -> str | None:
    """A Python that has nnunetv2: this one, or $CARDIGAN_NNUNET_PYTHON (CI installs nnunetv2 in
    a separate venv, since its dependencies bring a torchvision that does not match our torch)."""
    try:
        import nnunetv2  # noqa: F401

        return sys.executable
    except ImportError:
        return os.environ.get("CARDIGAN_NNUNET_PYTHON") or None


# About 70 s on 2 busy cores; generous, since a wedged run must fail the test, not hang CI, and
# a machine shared with other jobs was seen to take over 600 s.
NNUNET_TIMEOUT_S = 1800
NNUNET_CHECK = textwrap.dedent("""
    import json, os, sys
    import torch
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (
        extract_fingerprints, plan_experiments, preprocess)
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity
    from nnunetv2.paths import nnUNet_raw
    from nnunetv2.run.run_training import get_trainer_from_args

    name = sys.argv[1]
    verify_dataset_integrity(os.path.join(nnUNet_raw, name), num_processes=1)
    extract_fingerprints([7], num_processes=1, check_dataset_integrity=False)
    plan_experiments([7])  # copies the raw folder's splits_final.json to the preprocessed one
    preprocess([7], configurations=("2d",), num_processes=(1,))
    folds = []
    for fold in range(5):
        trainer = get_trainer_from_args(name, "2d", fold, device=torch.device("cpu"))
        tr, val = trainer.do_split()
        folds.append({"train": sorted(tr), "val": sorted(val)})
    print("FOLDS=" + json.dumps(folds))
""")


def test_nnunetv2_verifies_and_loads_the_grouped_folds(built, tmp_path):
    python = _nnunet_python()
    if python is None:
        if os.environ.get("CARDIGAN_REQUIRE_NNUNET") == "1":
            pytest.fail("CARDIGAN_REQUIRE_NNUNET=1 but nnunetv2 is not installed")
        pytest.skip("nnunetv2 is not installed (pip install nnunetv2 -c .ci/nnunet-constraints.txt, "
                    "or set CARDIGAN_NNUNET_PYTHON)")
    raw, pre, results = tmp_path / "raw", tmp_path / "preprocessed", tmp_path / "results"
    shutil.copytree(built / "export" / "nnunet" / "Dataset007_Toy", raw / "Dataset007_Toy")
    pre.mkdir()
    results.mkdir()
    env = {**os.environ, "nnUNet_raw": str(raw), "nnUNet_preprocessed": str(pre),
           "nnUNet_results": str(results), "OMP_NUM_THREADS": "1", "nnUNet_n_proc_DA": "1"}
    proc = subprocess.run([python, "-c", NNUNET_CHECK, "Dataset007_Toy"], env=env,
                          capture_output=True, text=True, timeout=NNUNET_TIMEOUT_S)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("FOLDS="))
    loaded = json.loads(line[len("FOLDS="):])
    ours = json.loads((raw / "Dataset007_Toy" / "splits_final.json").read_text())
    assert loaded == [{"train": sorted(s["train"]), "val": sorted(s["val"])} for s in ours]
    # ...and a broken dataset fails nnU-Net's own check
    (raw / "Dataset007_Toy" / "labelsTr" / "syn_000001.nii.gz").unlink()
    proc = subprocess.run([python, "-c", NNUNET_CHECK, "Dataset007_Toy"], env=env,
                          capture_output=True, text=True, timeout=NNUNET_TIMEOUT_S)
    assert proc.returncode != 0 and "syn_000001" in proc.stdout + proc.stderr


def test_one_monai_training_step_with_real_transforms(built):
    from monai.losses import DiceCELoss
    from monai.networks.nets import UNet
    from monai.transforms import Compose, Rand2DElasticd, RandAffined

    keys = ["image", "mask"]
    transform = Compose([
        RandAffined(keys=keys, prob=1.0, rotate_range=0.3, scale_range=0.1,
                    translate_range=4, mode=("bilinear", "nearest"), padding_mode="zeros"),
        Rand2DElasticd(keys=keys, spacing=(16, 16), magnitude_range=(1, 2), prob=1.0,
                       mode=("bilinear", "nearest"), padding_mode="zeros"),
    ])
    transform.set_random_state(0)
    syn = SyntheticDataset(built / "export" / "synthetic.h5", transform=transform)
    real = ExtractedDataset(built / "data", "train", ["4CH"], transform=transform)
    train_set, val_set = grouped_split(torch.utils.data.ConcatDataset([syn, real]), FOLDS, 0)
    assert len(train_set) and len(val_set)
    batch = next(iter(torch.utils.data.DataLoader(train_set, batch_size=4, shuffle=False)))
    image, mask = batch["image"].as_tensor(), batch["mask"].as_tensor()
    assert image.shape == mask.shape == (4, 1, SIZE, SIZE)
    assert set(torch.unique(mask).tolist()) <= {0, 1, 2, 3}  # nearest keeps labels labels
    torch.manual_seed(0)
    net = UNet(spatial_dims=2, in_channels=1, out_channels=4, channels=(4, 8), strides=(2,))
    before = [p.detach().clone() for p in net.parameters()]
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    loss = DiceCELoss(to_onehot_y=True, softmax=True)(net(image), mask)
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    assert any(not torch.equal(a, b) for a, b in zip(before, net.parameters()))


def _png_masks(folder: Path, n: int = 3) -> Path:
    """Masks like the training ones (so deformations can pass the area checks), as PNG files."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(synthetic_frame(rng, SIZE)[1]).save(folder / f"heart{i}_4CH_ED.png")
    return folder


def test_sample_from_png_masks_with_only_the_generator(built, tmp_path):
    alone = tmp_path / "alone"
    alone.mkdir()
    generator = shutil.copy(built / "train" / "generator.pt", alone / "generator.pt")
    masks = _png_masks(tmp_path / "masks")
    # the plausibility ranges came with the file, from the real train masks
    extra = load_generator(generator)[2]
    expected = AreaRanges.from_masks(m.mask for m in load_extracted_masks(
        [built / "data" / "anno_train_4CH.h5"]))
    assert extra["plausibility"]["area_ranges"] == expected.to_dict()

    out = cardigan.generate(generator, masks, styles=2, seed=3, augment=1)
    n = len(out.images)
    assert out.images.shape == out.masks.shape == (n, SIZE, SIZE) and out.images.dtype == np.uint8
    assert n == 2 * (3 + out.stats["accepted"]) and out.stats["accepted"] >= 1
    assert out.names == ["heart0_4CH_ED", "heart1_4CH_ED", "heart2_4CH_ED"]
    assert out.source.tolist()[:2] == [0, 0] and out.style.tolist()[:2] == [0, 1]
    assert not np.array_equal(out.images[0], out.images[1])  # two styles of one mask
    again = cardigan.generate(generator, masks, styles=2, seed=3, augment=1)
    assert np.array_equal(again.images, out.images)
    arrays = cardigan.generate(generator, np.stack([np.asarray(Image.open(p)) for p in
                                                    sorted(masks.iterdir())]), styles=1, augment=0)
    assert len(arrays.images) == 3

    # the cardigan command: `cardigan sample --generator G --masks DIR --out OUT`
    assert cli_main(["sample", "--generator", str(generator), "--masks", str(masks), "--out",
                     str(tmp_path / "cli.h5"), "--styles", "2", "--augment", "1",
                     "--set", "sample.seed=3", "--set", "sample.device=cpu"]) == 0
    ds = SyntheticDataset(tmp_path / "cli.h5")
    assert len(ds) == n and ds[0]["source"] == "user" and ds[0]["source_patient"] == "heart0_4CH_ED"
    with h5py.File(tmp_path / "cli.h5") as f:
        assert np.array_equal(f["images"][()], out.images)  # the function and the command agree
        styles = [s.decode() for s in f["style"][()]]
    # the VAE's styles come from the real training images' bank stored in generator.pt
    assert styles == out.style_source and all(s.startswith("real:patient") for s in styles)
    assert cli_main(["sample", "--styles", "2"]) == 1  # --styles goes with --masks


def test_generator_without_ranges(built, tmp_path):
    g, cfg, extra = load_generator(built / "train" / "generator.pt")
    old = tmp_path / "old.pt"
    save_generator(old, g, cfg, {k: v for k, v in extra.items() if k != "plausibility"})
    masks = _png_masks(tmp_path / "masks", n=1)
    with pytest.raises(ValueError, match="no plausibility ranges.*augment 0"):
        cardigan.generate(old, masks, augment=1)
    assert len(cardigan.generate(old, masks, augment=0, styles=1).images) == 1
    with pytest.raises(ValueError, match="styles must be at least 1"):
        cardigan.generate(old, masks, styles=0)
