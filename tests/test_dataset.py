"""SyntheticDataset: lazy reading of synthetic.h5, safe with several DataLoader workers."""

import h5py
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from cardigan.dataset import SyntheticDataset

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
    assert item["mask"].dtype == torch.int64 and np.array_equal(item["mask"].numpy(), expected_mask)
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
