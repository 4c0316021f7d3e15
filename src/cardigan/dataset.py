"""The public face of the datasets: ``from cardigan.dataset import SyntheticDataset`` (the code
lives in :mod:`cardigan.data.dataset`)."""

from cardigan.data.dataset import ExtractedDataset, SyntheticDataset, grouped_split, item_patients

__all__ = ["ExtractedDataset", "SyntheticDataset", "grouped_split", "item_patients"]
