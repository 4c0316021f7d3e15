"""The synthetic dataset as an nnU-Net v2 raw dataset, and a checker for nnU-Net's integrity rules.

Layout (nnU-Net v2 ``documentation/dataset_format.md``)::

    Dataset{ID:03d}_{name}/
        dataset.json
        splits_final.json        folds grouped by source patient (see below)
        cases.csv                each case id -> its row in synthetic.h5 and its provenance
        imagesTr/{case}_0000.nii.gz
        labelsTr/{case}.nii.gz
        imagesTs/, labelsTs/     the real test split, with export.nnunet.test_split only

Each image and label is a **2D** NIfTI written with SimpleITK: nnU-Net's ``SimpleITKIO`` reads a 2D
file as a (1, 1, H, W) array with a dummy out-of-plane spacing, which is how nnU-Net v2 supports 2D
data natively (no pseudo-3D conversion). The spacing is the sample's (column mm, row mm) in ITK
order, the same for image and label. ``channel_names`` is ``{"0": "US"}``: nnU-Net maps every
channel name other than CT/noNorm/zscore/rescale_0_1/rgb_to_0_1 to per-image z-scoring, the
right choice for ultrasound. Case identifiers are ``syn_{row:06d}`` / ``real_{row:06d}`` where
``row`` is the sample's row in ``synthetic.h5``; real test frames are ``test_{k:06d}``.

``splits_final.json`` holds ``export.nnunet.folds`` folds (``[{"train": [...], "val": [...]}]``)
in which every source patient, with all its deformed variants, styles and (with
``include_real``) real frames, is in exactly one validation fold (:mod:`cardigan.data.splits`):
nnU-Net's own default split is random over cases and would leak near-copies of a heart from
training into validation. nnU-Net reads the file from ``$nnUNet_preprocessed/Dataset…/``;
``nnUNetv2_plan_and_preprocess`` (2.8) copies it there from the raw folder by itself.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import SimpleITK as sitk

from cardigan.core.atomic import atomic_dir, atomic_output
from cardigan.core.labels import LABELS
from cardigan.data.frames import iter_frames
from cardigan.data.splits import assign_folds

log = logging.getLogger("cardigan")

FILE_ENDING = ".nii.gz"
CHANNEL_NAMES = {"0": "US"}
SPLITS_FILE = "splits_final.json"
CASES_FILE = "cases.csv"
CASE_COLUMNS = ["case", "subset", "fold", "row", "is_synthetic", "source", "source_patient",
                "view", "instant", "variant", "seed", "augmentation"]


def dataset_folder_name(dataset_id: int, name: str) -> str:
    return f"Dataset{dataset_id:03d}_{name}"


def _write(array: np.ndarray, spacing_rc: tuple[float, float], path: Path) -> None:
    img = sitk.GetImageFromArray(array)
    img.SetSpacing((float(spacing_rc[1]), float(spacing_rc[0])))
    sitk.WriteImage(img, str(path), True)


def _spacing(values) -> tuple[tuple[float, float], bool]:
    """(row mm, column mm), or 1 x 1 mm and False when unknown (PNG user masks)."""
    spacing = tuple(float(s) for s in values)
    if not np.all(np.isfinite(spacing)) or min(spacing) <= 0:
        return (1.0, 1.0), False
    return spacing, True  # type: ignore[return-value]


def _text(values) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]


def write_nnunet(synthetic_h5: str | Path, out_dir: str | Path, dataset_id: int, name: str,
                 n_folds: int = 5,
                 test_pairs: Sequence[tuple[str | Path, str | Path]] = ()) -> Path:
    """Write the nnU-Net raw dataset of ``synthetic_h5`` to ``out_dir`` (replacing it atomically:
    built in a temporary folder beside it and renamed). Returns ``out_dir``.

    ``n_folds``: folds of ``splits_final.json``. ``test_pairs``: (images, annotations) files of
    the real test split, written to imagesTs/labelsTs; a test patient that is also a source of
    the training cases is refused (the test set would not be held out).
    """
    out_dir = Path(out_dir)
    expected = dataset_folder_name(dataset_id, name)
    if out_dir.name != expected:
        raise ValueError(f"nnU-Net dataset folder must be named {expected}, got {out_dir}")
    with h5py.File(synthetic_h5, "r") as f:
        n = f["images"].shape[0]
        synthetic = f["is_synthetic"][()].astype(bool)
        columns = {k: _text(f[k][()]) for k in ("source", "source_patient", "view", "instant",
                                                 "augmentation")}
        variants, seeds = f["variant"][()], f["seed"][()]
    cases = [f"{'syn' if synthetic[i] else 'real'}_{i:06d}" for i in range(n)]
    try:
        folds = assign_folds(columns["source_patient"], n_folds)
    except ValueError as err:
        raise ValueError(f"config key export.nnunet.folds: {synthetic_h5}: {err}") from None
    rows = [{"case": cases[i], "subset": "train", "fold": folds[columns["source_patient"][i]],
             "row": i, "is_synthetic": int(synthetic[i]), "variant": int(variants[i]),
             "seed": int(seeds[i]), **{k: v[i] for k, v in columns.items()}} for i in range(n)]
    with atomic_dir(out_dir) as tmp:
        (tmp / "imagesTr").mkdir()
        (tmp / "labelsTr").mkdir()
        unknown_spacing = 0
        with h5py.File(synthetic_h5, "r") as f:
            spacings = f["spacing"][()]
            for i in range(n):
                spacing, known = _spacing(spacings[i])
                unknown_spacing += not known
                _write(f["images"][i], spacing, tmp / "imagesTr" / f"{cases[i]}_0000{FILE_ENDING}")
                _write(f["masks"][i], spacing, tmp / "labelsTr" / f"{cases[i]}{FILE_ENDING}")
        if unknown_spacing:
            log.warning("nnU-Net export: %d samples have no known spacing (PNG user masks): "
                        "written with 1 x 1 mm", unknown_spacing)
        if test_pairs:
            rows += _write_test(tmp, test_pairs, set(columns["source_patient"]))
        splits = [{"train": [c for c, p in zip(cases, columns["source_patient"])
                             if folds[p] != k],
                   "val": [c for c, p in zip(cases, columns["source_patient"]) if folds[p] == k]}
                  for k in range(n_folds)]
        (tmp / SPLITS_FILE).write_text(json.dumps(splits, indent=1) + "\n")
        buf = io.StringIO()
        writer = csv.DictWriter(buf, CASE_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        (tmp / CASES_FILE).write_text(buf.getvalue())
        dataset = {
            "name": name,
            "description": "cardiGAN synthetic echocardiograms (SPADE GAN conditioned on CAMUS-"
                           "style masks); see dataset_card.md beside this folder; folds grouped "
                           f"by source patient in {SPLITS_FILE}, provenance in {CASES_FILE}",
            "channel_names": CHANNEL_NAMES,
            "labels": {LABELS[v]: v for v in sorted(LABELS)},
            "numTraining": n,
            "file_ending": FILE_ENDING,
            "overwrite_image_reader_writer": "SimpleITKIO",
        }
        if test_pairs:
            dataset["numTest"] = sum(r["subset"] == "test" for r in rows)
        (tmp / "dataset.json").write_text(json.dumps(dataset, indent=2) + "\n")
        check_nnunet_dataset(tmp)
    log.info("wrote nnU-Net raw dataset %s (%d training cases in %d patient-grouped folds, %d "
             "test cases)", out_dir, n, n_folds, len(rows) - n)
    return out_dir


def _write_test(folder: Path, test_pairs, train_patients: set[str]) -> list[dict]:
    """Real test frames -> imagesTs/labelsTs; their cases.csv rows."""
    (folder / "imagesTs").mkdir()
    (folder / "labelsTs").mkdir()
    rows = []
    for img_path, anno_path in test_pairs:
        for fr in iter_frames(img_path, anno_path):
            if fr.patient in train_patients:
                raise ValueError(
                    f"config key export.nnunet.test_split: test patient {fr.patient} of "
                    f"{img_path} is also a source of the training cases (is test among "
                    "sample.mask_splits?): the test set would not be held out")
            case = f"test_{len(rows):06d}"
            spacing, _ = _spacing(fr.spacing)
            _write(fr.image, spacing, folder / "imagesTs" / f"{case}_0000{FILE_ENDING}")
            _write(fr.mask, spacing, folder / "labelsTs" / f"{case}{FILE_ENDING}")
            rows.append({"case": case, "subset": "test", "fold": "", "row": "",
                         "is_synthetic": 0, "source": "test", "source_patient": fr.patient,
                         "view": fr.view, "instant": fr.instant, "variant": 0, "seed": -1,
                         "augmentation": "{}"})
    return rows


def write_datalist(nnunet_dir: str | Path, out_path: str | Path) -> Path:
    """A MONAI Decathlon-style datalist of the nnU-Net files (``monai.data.load_decathlon_datalist``
    reads it): ``training`` entries carry ``image``, ``label`` (paths relative to the datalist's
    folder), ``fold`` (the patient-grouped fold of splits_final.json), ``case``,
    ``source_patient`` and ``is_synthetic``; ``testing`` holds the real test split, if written."""
    nnunet_dir, out_path = Path(nnunet_dir), Path(out_path)
    base = Path(os.path.relpath(nnunet_dir, out_path.parent))
    ds = json.loads((nnunet_dir / "dataset.json").read_text())
    lists: dict[str, list[dict]] = {"train": [], "test": []}
    with open(nnunet_dir / CASES_FILE, newline="") as fh:
        for row in csv.DictReader(fh):
            sub = "Tr" if row["subset"] == "train" else "Ts"
            entry = {"image": (base / f"images{sub}" / f"{row['case']}_0000{FILE_ENDING}").as_posix(),
                     "label": (base / f"labels{sub}" / f"{row['case']}{FILE_ENDING}").as_posix(),
                     "case": row["case"], "source_patient": row["source_patient"],
                     "is_synthetic": row["is_synthetic"] == "1"}
            if row["subset"] == "train":
                entry["fold"] = int(row["fold"])
            lists[row["subset"]].append(entry)
    datalist = {"name": ds["name"], "description": ds["description"],
                "labels": {str(v): k for k, v in ds["labels"].items()}, "modality": {"0": "US"},
                "tensorImageSize": "2D", "numTraining": len(lists["train"]),
                "numTest": len(lists["test"]), "training": lists["train"],
                "testing": lists["test"]}
    with atomic_output(out_path) as tmp:
        Path(tmp).write_text(json.dumps(datalist, indent=1) + "\n")
    return out_path


def check_nnunet_dataset(folder: str | Path) -> int:
    """Re-implementation of nnU-Net v2's ``verify_dataset_integrity`` for this dataset's format.

    Checks: dataset.json has labels, channel_names, numTraining and file_ending; labels are
    consecutive from 0 (background); numTraining equals the number of cases in imagesTr; every
    case has all its channel files ``{case}_{XXXX}`` and a label file; label files hold only the
    declared labels; image and label have the same shape, spacing, origin and direction. Raises
    ValueError naming the first problem; returns the number of cases.
    """
    folder = Path(folder)
    ds = json.loads((folder / "dataset.json").read_text())
    missing = [k for k in ("labels", "channel_names", "numTraining", "file_ending") if k not in ds]
    if missing:
        raise ValueError(f"{folder}/dataset.json misses required keys {missing}")
    values = sorted(ds["labels"].values())
    if values[0] != 0 or np.any(np.diff(values) != 1):
        raise ValueError(f"{folder}: labels must be consecutive from 0, got {values}")
    ending = ds["file_ending"]
    channels = sorted(int(c) for c in ds["channel_names"])
    pattern = re.compile(r"^(?P<case>.+)_(?P<ch>\d{4})" + re.escape(ending) + "$")
    cases: dict[str, set[int]] = {}
    for p in sorted((folder / "imagesTr").iterdir()):
        m = pattern.match(p.name)
        if m is None:
            raise ValueError(f"{p}: not named case_XXXX{ending}")
        cases.setdefault(m["case"], set()).add(int(m["ch"]))
    if len(cases) != ds["numTraining"]:
        raise ValueError(f"{folder}: numTraining is {ds['numTraining']} but imagesTr holds "
                         f"{len(cases)} cases")
    labels_found = {p.name[: -len(ending)] for p in (folder / "labelsTr").iterdir()
                    if p.name.endswith(ending)}
    for case, chans in cases.items():
        if sorted(chans) != channels:
            raise ValueError(f"{folder}: case {case} has channels {sorted(chans)}, expected "
                             f"{channels}")
        if case not in labels_found:
            raise ValueError(f"{folder}: case {case} has no label file in labelsTr")
        seg = sitk.ReadImage(str(folder / "labelsTr" / f"{case}{ending}"))
        bad = sorted(set(np.unique(sitk.GetArrayViewFromImage(seg)).tolist()) - set(values))
        if bad:
            raise ValueError(f"{folder}: label file of {case} holds undeclared labels {bad}")
        for c in channels:
            img = sitk.ReadImage(str(folder / "imagesTr" / f"{case}_{c:04d}{ending}"))
            if img.GetSize() != seg.GetSize():
                raise ValueError(f"{folder}: {case} image size {img.GetSize()} != label size "
                                 f"{seg.GetSize()}")
            for what in ("GetSpacing", "GetOrigin", "GetDirection"):
                a, b = getattr(img, what)(), getattr(seg, what)()
                if not np.allclose(a, b):
                    raise ValueError(f"{folder}: {case} image and label differ in {what[3:]}: "
                                     f"{a} != {b}")
            if np.isnan(sitk.GetArrayViewFromImage(img)).any():
                raise ValueError(f"{folder}: image of {case} contains NaN")
    _check_splits(folder, set(cases))
    return len(cases)


def _check_splits(folder: Path, cases: set[str]) -> None:
    """splits_final.json (when present): each fold's train and val partition the training cases,
    each case is validated in exactly one fold and, with cases.csv, each source patient too."""
    path = folder / SPLITS_FILE
    if not path.exists():
        return
    splits = json.loads(path.read_text())
    seen: dict[str, int] = {}
    for k, split in enumerate(splits):
        train, val = set(split["train"]), set(split["val"])
        if train & val or train | val != cases:
            raise ValueError(f"{path}: fold {k}: train and val do not partition the "
                             f"{len(cases)} training cases")
        for c in val:
            if c in seen:
                raise ValueError(f"{path}: case {c} is validated in folds {seen[c]} and {k}")
            seen[c] = k
    if set(seen) != cases:
        raise ValueError(f"{path}: {len(cases - set(seen))} cases are in no validation fold")
    if (folder / CASES_FILE).exists():
        patient_fold: dict[str, int] = {}
        with open(folder / CASES_FILE, newline="") as fh:
            for row in csv.DictReader(fh):
                if row["subset"] != "train":
                    continue
                if row["case"] not in seen:
                    raise ValueError(f"{folder / CASES_FILE}: case {row['case']} is not a "
                                     "training case")
                fold = patient_fold.setdefault(row["source_patient"], seen[row["case"]])
                if fold != seen[row["case"]]:
                    raise ValueError(f"{path}: source patient {row['source_patient']} is "
                                     f"validated in folds {fold} and {seen[row['case']]}")


def run_nnunet(synthetic_h5: str | Path, folder: str | Path, datalist: str | Path,
               nnunet_cfg: Mapping[str, Any], test_images: Sequence[str | Path] = (),
               test_annos: Sequence[str | Path] = ()) -> None:
    """The nnU-Net v2 raw dataset of synthetic.h5 in ``folder`` (with the real test split as
    imagesTs/labelsTs when ``export.nnunet.test_split``), and its MONAI datalist."""
    test = list(zip(test_images, test_annos)) if nnunet_cfg["test_split"] else []
    write_nnunet(synthetic_h5, folder, nnunet_cfg["dataset_id"], nnunet_cfg["name"],
                 n_folds=nnunet_cfg["folds"], test_pairs=test)
    write_datalist(folder, datalist)
