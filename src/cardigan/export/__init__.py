"""Stages export and manifest: the synthetic HDF5, its preview and dataset card, nnU-Net, and
the manifest of every output."""
