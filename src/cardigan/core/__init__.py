"""Shared by every stage: config and its schema defaults, output paths, atomic writes, devices,
logging, labels, plots and code fingerprints. Imports nothing from the stages."""
