#!/usr/bin/env bash
# Fetches, on a machine with PyPI, the wheels that bench/gpu_check.sh needs on a GPU machine that
# cannot reach PyPI and lacks them; gpu_check.sh installs them from .whl/ before its first section.
#
#   bash bench/gpu_wheels.sh                      # wheels for the GPU machine's Python (3.12)
#   GPU_WHEELS_PYTHON=3.11 GPU_WHEELS_DIR=/tmp/w bash bench/gpu_wheels.sh   # another Python/folder
#
# The list: what the check imports and the H200 image of this workplace lacks (its package list:
# the device tool's KINDS.md). jsonschema validates the training config; the other three are its
# dependencies (attrs and typing-extensions are on the image). The imaging stack (SimpleITK,
# nibabel), MONAI and Snakemake are not needed: the check never imports them, which
# tests/test_gpu_check.py holds it to.
set -euo pipefail
cd "$(dirname "$0")/.."
PYVER=${GPU_WHEELS_PYTHON:-3.12}
DIR=${GPU_WHEELS_DIR:-.whl}
WHEELS=(jsonschema==4.26.0 jsonschema-specifications==2025.9.1 referencing==0.37.0
        rpds-py==2026.9.1)
mkdir -p "$DIR"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d "$DIR" "${WHEELS[@]}"
ls -1 "$DIR"
