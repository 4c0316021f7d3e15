"""The export stage: synthetic.h5, preview, dataset card, nnU-Net raw dataset."""

import csv
import hashlib
import json
import shutil

import h5py
import numpy as np
import pytest
import SimpleITK as sitk
import torch
import yaml

from cardigan.core.config import config_hash, validate
from cardigan.data.masks import toy_heart_mask
from cardigan.export.nnunet import check_nnunet_dataset, run_nnunet
from cardigan.export.provenance import provenance
from cardigan.export.stage import run_export
from cardigan.gan.generator_file import save_generator
from cardigan.gan.model import build_models
from cardigan.gan.model_config import ModelConfig
from cardigan.synth.sample import run_sample

SIZE = 64
N_PATIENTS = 3
# Validated configs, as the stages get them (every key present).
_CONFIG = validate({"data": {"views": ["4CH"], "image_size": SIZE}, "phantom": {"seed": 0},
                    "train": {"ngf": 4, "num_upsampling_layers": "normal"},
                    "sample": {"mask_splits": ["train"], "seed": 0, "device": "cpu",
                               "samples_per_mask": 1, "grey_levels": "none",
                               "speckle": "none", "batch_size": 4,
                               "augment": {"n": 1, "max_tries": 20, "elastic_alpha": 3.0,
                                           "elastic_sigma": 8.0}},
                    "export": {"formats": ["h5", "nnunet"], "include_real": True,
                               "nnunet": {"dataset_id": 7, "name": "Toy", "folds": 3}}})
PROVENANCE = provenance(_CONFIG)
EXPORT = _CONFIG["export"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("export_inputs")
    torch.manual_seed(0)
    cfg = ModelConfig(image_size=SIZE, background_classes=0, ngf=4, ndf=4, spade_hidden=8,
                      n_layers_D=2)
    save_generator(d / "g.pt", build_models(cfg)[0], cfg, {"iterations": 3})
    rng = np.random.default_rng(0)
    with h5py.File(d / "train_4CH.h5", "w") as fi, h5py.File(d / "anno_train_4CH.h5", "w") as fa:
        for p in range(N_PATIENTS):
            for c in (0, 1):
                im = fi.create_dataset(f"patient{p + 1:04d}_4CH_im_channel{c}",
                                       data=rng.integers(0, 255, (SIZE, SIZE), dtype=np.uint8))
                gt = fa.create_dataset(f"patient{p + 1:04d}_4CH_gt_channel{c}",
                                       data=toy_heart_mask(SIZE, rng))
                im.attrs["spacing"] = gt.attrs["spacing"] = [0.5, 0.7]
    sample_cfg = _CONFIG["sample"]
    run_sample(d / "g.pt", [d / "anno_train_4CH.h5"], [d / "anno_train_4CH.h5"], sample_cfg,
               d / "samples.h5")
    return d


def outputs(root):
    return {"h5": root / "synthetic.h5", "preview": root / "preview.png",
            "card": root / "dataset_card.md", "nnunet": root / "nnunet" / "Dataset007_Toy",
            "datalist": root / "datalist.json"}


def export(inputs, root, **kw):
    cfg = {**EXPORT, **kw}
    out = outputs(root)
    counts = run_export(inputs / "samples.h5", inputs / "g.pt", [inputs / "train_4CH.h5"],
                        [inputs / "anno_train_4CH.h5"], provenance({**_CONFIG, "export": cfg}),
                        out)
    if "nnunet" in cfg["formats"]:  # the workflow's nnunet rule
        run_nnunet(out["h5"], out["nnunet"], out["datalist"], cfg["nnunet"])
    return counts


@pytest.fixture(scope="module")
def exported(inputs, tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    export(inputs, root)
    return root


def files(root):
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_synthetic_h5(inputs, exported):
    with h5py.File(exported / "synthetic.h5") as f, h5py.File(inputs / "samples.h5") as s:
        n_syn = s["images"].shape[0]
        n = f["images"].shape[0]
        assert n == n_syn + 2 * N_PATIENTS
        for name in ("images", "masks"):
            ds = f[name]
            assert ds.dtype == np.uint8 and ds.shape == (n, SIZE, SIZE)
            assert ds.chunks == (1, SIZE, SIZE) and ds.compression == "gzip"
        assert np.array_equal(f["images"][:n_syn], s["images"][()])
        flags = f["is_synthetic"][()]
        assert flags[:n_syn].all() and not flags[n_syn:].any()
        with h5py.File(inputs / "train_4CH.h5") as fi:
            assert np.array_equal(f["images"][n_syn], fi["patient0001_4CH_im_channel0"][()])
        assert f["spacing"].dtype == np.float32 and f["spacing"].shape == (n, 2)
        assert f["seed"].dtype == np.int64 and f["seed"][n_syn] == -1
        assert json.loads(f["augmentation"][n_syn]) == {}
        assert json.loads(f["augmentation"][0]) == {"identity": True}
        assert {v.decode() for v in f["view"][()]} == {"4CH"}
        assert {v.decode() for v in f["instant"][()]} == {"ED", "ES"}
        attrs = f.attrs
        assert list(attrs["label_values"]) == [0, 1, 2, 3]
        assert list(attrs["label_names"])[1] == "LV cavity"
        assert attrs["image_size"] == SIZE
        assert yaml.safe_load(attrs["config_yaml"]) == PROVENANCE
        assert attrs["config_sha256"] == config_hash(PROVENANCE)
        gen_sha = hashlib.sha256((inputs / "g.pt").read_bytes()).hexdigest()
        assert attrs["generator_sha256"] == gen_sha
        assert attrs["cardigan_version"]


def test_outputs_are_byte_identical(inputs, exported, tmp_path):
    export(inputs, tmp_path)
    assert files(tmp_path) == files(exported)


def test_preview_and_card(exported):
    png = (exported / "preview.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and b"Software" not in png
    card = (exported / "dataset_card.md").read_text()
    assert card.startswith("# cardiGAN synthetic dataset")
    assert "| real | 6 |" in card  # real images (include_real)
    assert "| real mask | 6 |" in card  # synthetic images from the real masks
    assert config_hash(PROVENANCE) in card
    assert "**left atrium** (label 3)" in card and "nnunet/Dataset<id>_<name>/" in card
    assert "- 1 image(s) per mask, seed 0." in card  # no sample.own_styles


def test_card_says_own_styles(inputs, tmp_path):
    sample = {**_CONFIG["sample"], "own_styles": 1}
    out = outputs(tmp_path)
    run_export(inputs / "samples.h5", inputs / "g.pt", [inputs / "train_4CH.h5"],
               [inputs / "anno_train_4CH.h5"], provenance({**_CONFIG, "sample": sample}), out)
    assert ("- 1 image(s) per mask, the first 1 in the style of the training frame the mask was "
            "drawn on where the generator stores it (`sample.own_styles`), seed 0."
            in out["card"].read_text())


def test_preview_shows_each_mask_with_its_styles():
    from cardigan.export.preview import preview_rows

    pairs = [(m, 0) for m in range(10) for _ in range(2)]  # 10 masks, 2 styles each
    rows = preview_rows(pairs, 8)
    assert len(rows) == 8 and rows[::2] == [r - 1 for r in rows[1::2]]
    assert all(pairs[a] == pairs[b] for a, b in zip(rows[::2], rows[1::2]))
    assert len({pairs[r] for r in rows}) == 4 and rows[0] == 0 and rows[-1] == 19
    single = preview_rows(list(range(30)), 8)  # one style per mask: 8 evenly spaced
    assert len(single) == 8 and single[0] == 0 and single[-1] == 29
    assert preview_rows([], 8) == [] and preview_rows([7, 7, 7], 8) == [0, 1, 2]


def test_nnunet_dataset(exported):
    folder = exported / "nnunet" / "Dataset007_Toy"
    ds = json.loads((folder / "dataset.json").read_text())
    assert ds["labels"] == {"background": 0, "LV cavity": 1, "LV myocardium": 2, "left atrium": 3}
    assert ds["channel_names"] == {"0": "US"} and ds["file_ending"] == ".nii.gz"
    with h5py.File(exported / "synthetic.h5") as f:
        n = f["images"].shape[0]
        assert ds["numTraining"] == n
        img = sitk.ReadImage(str(folder / "imagesTr" / "syn_000000_0000.nii.gz"))
        seg = sitk.ReadImage(str(folder / "labelsTr" / "syn_000000.nii.gz"))
        assert img.GetDimension() == 2 and img.GetSpacing() == pytest.approx((0.7, 0.5))
        assert np.array_equal(sitk.GetArrayFromImage(img), f["images"][0])
        assert np.array_equal(sitk.GetArrayFromImage(seg), f["masks"][0])
        assert (folder / "labelsTr" / f"real_{n - 1:06d}.nii.gz").is_file()
    assert check_nnunet_dataset(folder) == n


def test_nnunet_checker_catches_problems(exported, tmp_path):
    folder = tmp_path / "Dataset007_Toy"
    shutil.copytree(exported / "nnunet" / "Dataset007_Toy", folder)
    (folder / "labelsTr" / "syn_000001.nii.gz").unlink()
    with pytest.raises(ValueError, match="syn_000001 has no label"):
        check_nnunet_dataset(folder)
    bad = sitk.GetImageFromArray(np.full((SIZE, SIZE), 7, np.uint8))
    bad.SetSpacing((0.7, 0.5))
    sitk.WriteImage(bad, str(folder / "labelsTr" / "syn_000001.nii.gz"))
    with pytest.raises(ValueError, match=r"undeclared labels \[7\]"):
        check_nnunet_dataset(folder)
    bad = sitk.GetImageFromArray(np.zeros((SIZE, SIZE), np.uint8))
    sitk.WriteImage(bad, str(folder / "labelsTr" / "syn_000001.nii.gz"))  # spacing 1 x 1
    with pytest.raises(ValueError, match="Spacing"):
        check_nnunet_dataset(folder)
    meta = json.loads((folder / "dataset.json").read_text())
    meta["numTraining"] += 1
    (folder / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="numTraining"):
        check_nnunet_dataset(folder)


def test_h5_only_without_real(inputs, tmp_path):
    out = outputs(tmp_path)
    counts = run_export(inputs / "samples.h5", inputs / "g.pt", [inputs / "train_4CH.h5"],
                        [inputs / "anno_train_4CH.h5"],
                        provenance({**_CONFIG, "export": {**EXPORT, "include_real": False}}),
                        {k: v for k, v in out.items() if k != "nnunet"})
    assert counts["real"] == 0
    assert not (tmp_path / "nnunet").exists()
    with h5py.File(out["h5"]) as f:
        assert f["is_synthetic"][()].all()


def test_samples_from_another_generator(inputs, tmp_path):
    other = tmp_path / "other.pt"
    torch.manual_seed(1)
    cfg = ModelConfig(image_size=SIZE, background_classes=0, ngf=4, ndf=4, spade_hidden=8,
                      n_layers_D=2)
    save_generator(other, build_models(cfg)[0], cfg)
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="re-run the sample stage"):
        run_export(inputs / "samples.h5", other, [inputs / "train_4CH.h5"],
                   [inputs / "anno_train_4CH.h5"], PROVENANCE, outputs(out))
    assert not out.exists() or not any(out.rglob("*.h5"))


def test_unwritable_output_folder(inputs, tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    with pytest.raises(OSError, match="blocker"):
        export(inputs, blocker)


def test_folds_grouped_by_patient_and_checked(inputs, exported, tmp_path):
    folder = tmp_path / "Dataset007_Toy"
    shutil.copytree(exported / "nnunet" / "Dataset007_Toy", folder)
    splits = json.loads((folder / "splits_final.json").read_text())
    with open(folder / "cases.csv", newline="") as fh:
        patient = {r["case"]: r["source_patient"] for r in csv.DictReader(fh)}
    assert len(splits) == 3  # export.nnunet.folds, one patient each here
    per_fold = [{patient[c] for c in s["val"]} for s in splits]
    assert all(len(p) == 1 for p in per_fold) and set.union(*per_fold) == set(patient.values())
    # one case of fold 0's patient moved to another fold: the patient would leak
    moved = splits[0]["val"].pop()
    leaked = patient[moved]
    splits[0]["train"].append(moved)
    splits[1]["train"].remove(moved)
    splits[1]["val"].append(moved)
    (folder / "splits_final.json").write_text(json.dumps(splits))
    with pytest.raises(ValueError, match=f"{leaked} is validated in folds 0 and 1"):
        check_nnunet_dataset(folder)
    with pytest.raises(ValueError, match="export.nnunet.folds: .*3 source patients cannot fill 4"):
        export(inputs, tmp_path / "four", nnunet={**EXPORT["nnunet"], "folds": 4})
