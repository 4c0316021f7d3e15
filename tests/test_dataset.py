"""SyntheticDataset: lazy reading of synthetic.h5, safe with several DataLoader workers."""

import h5py
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader
from train_fixtures import write_split

from cardigan.data.dataset import ExtractedDataset, SyntheticDataset, grouped_split

N, SIZE = 10, 16


@pytest.fixture(scope="module")
def h5(tmp_path_factory):
    path = tmp_path_factory.mktemp("dataset") / "synthetic.h5"
    rng = np.random.default_rng(0)
    s = h5py.string_dtype()
    with h5py.File(path, "w") as f:
        f["images"] = rng.integers(0, 256, (N, SIZE, SIZE), dtype=np.uint8)
        f["masks"] = rng.integers(0, 4, (N, SIZE, SIZE), dtype=np.uint8)
        f["is_synthetic"] = np.arange(N) < 7
        f["spacing"] = np.full((N, 2), 0.5, np.float32)
        f.create_dataset("source", data=["train"] * 7 + ["real"] * 3, dtype=s)
        f.create_dataset("source_patient", data=[f"patient{i:04d}" for i in range(N)], dtype=s)
        f.create_dataset("view", data=["4CH"] * N, dtype=s)
        f.create_dataset("instant", data=["ED", "ES"] * (N // 2), dtype=s)
    return path


def test_items(h5):
    ds = SyntheticDataset(h5)
    assert ds._file is None  # nothing opened by __init__
    assert len(ds) == N
    item = ds[3]
    with h5py.File(h5) as f:
        expected_image = f["images"][3] / 255.0
        expected_mask = f["masks"][3]
    assert item["image"].dtype == torch.float32 and item["image"].shape == (1, SIZE, SIZE)
    assert 0.0 <= item["image"].min() and item["image"].max() <= 1.0
    assert np.allclose(item["image"][0].numpy(), expected_image)
    assert item["mask"].dtype == torch.int64 and item["mask"].shape == (1, SIZE, SIZE)
    assert np.array_equal(item["mask"][0].numpy(), expected_mask)
    assert item["is_synthetic"] is True and item["source_patient"] == "patient0003"
    assert item["instant"] == "ES" and item["spacing"].tolist() == [0.5, 0.5]
    assert ds[-1]["is_synthetic"] is False
    with pytest.raises(IndexError):
        ds[N]


def test_synthetic_only_and_transform(h5):
    ds = SyntheticDataset(h5, transform=lambda d: {**d, "image": d["image"] * 2},
                          synthetic_only=True)
    assert len(ds) == 7
    assert all(ds[i]["is_synthetic"] for i in range(len(ds)))
    assert float(ds[0]["image"].max()) > 1.0


def test_dataloader_with_two_workers(h5):
    ds = SyntheticDataset(h5)
    ds[0]  # open a handle in the parent first: workers must not reuse it
    loader = DataLoader(ds, batch_size=3, num_workers=2, shuffle=False)
    seen = []
    for batch in loader:
        assert batch["image"].shape[1:] == (1, SIZE, SIZE)
        seen += batch["index"].tolist()
        for j, row in enumerate(batch["index"].tolist()):
            assert torch.equal(batch["mask"][j], ds[row]["mask"])
    assert seen == list(range(N))


def test_not_a_dataset(tmp_path):
    with pytest.raises(FileNotFoundError):
        SyntheticDataset(tmp_path / "missing.h5")
    bad = tmp_path / "bad.h5"
    with h5py.File(bad, "w") as f:
        f["x"] = [1]
    with pytest.raises(ValueError, match="no 'images'"):
        SyntheticDataset(bad)


def test_extracted_dataset(tmp_path):
    write_split(tmp_path, patients=3, size=SIZE, view="4CH")
    write_split(tmp_path, patients=2, size=SIZE, view="2CH", seed=1)
    ds = ExtractedDataset(tmp_path, "train", ["2CH", "4CH"])
    assert len(ds) == 10 and ds.patients[:4] == ["patient0001"] * 2 + ["patient0002"] * 2
    item = ds[4]  # 2CH (4 frames) first, then patient0001 4CH ED
    with h5py.File(tmp_path / "train_4CH.h5") as fi, h5py.File(tmp_path / "anno_train_4CH.h5") as fa:
        image, mask = fi["patient0001_4CH_im_channel0"][()], fa["patient0001_4CH_gt_channel0"][()]
    assert (item["source_patient"], item["view"], item["instant"]) == ("patient0001", "4CH", "ED")
    assert item["image"].shape == item["mask"].shape == (1, SIZE, SIZE)
    assert np.allclose(item["image"][0].numpy(), image / 255.0)
    assert np.array_equal(item["mask"][0].numpy(), mask) and item["is_synthetic"] is False
    assert len(ExtractedDataset(tmp_path, "train", ["4CH"], instants=["ES"])) == 3
    batch = next(iter(DataLoader(ds, batch_size=10, num_workers=2)))
    assert torch.equal(batch["mask"][4], item["mask"])
    with pytest.raises(FileNotFoundError, match="valid_4CH.h5"):
        ExtractedDataset(tmp_path, "valid", ["4CH"])


def test_grouped_split_keeps_patients_on_one_side(h5, tmp_path):
    write_split(tmp_path, patients=4, size=SIZE)
    # the synthetic rows are patients 0..9, the real frames patients 1..4: shared patients must
    # land on the same side whichever dataset they come from
    both = torch.utils.data.ConcatDataset([SyntheticDataset(h5), ExtractedDataset(tmp_path, "train",
                                                                                   ["4CH"])])
    seen_val = set()
    for fold in range(3):
        train, val = grouped_split(both, n_folds=3, fold=fold)
        assert sorted(train.indices + val.indices) == list(range(len(both)))
        tr = {both[i]["source_patient"] for i in train.indices}
        va = {both[i]["source_patient"] for i in val.indices}
        assert tr and va and not tr & va
        assert not va & seen_val
        seen_val |= va
    assert len(seen_val) == 10
    with pytest.raises(ValueError, match="fold 3"):
        grouped_split(both, n_folds=3, fold=3)
