"""Stage extract and the data every later stage reads: CAMUS readers, extraction to per-split
HDF5, frames, masks, splits and the PyTorch datasets."""
