#!/usr/bin/env bash
# Snakemake runs this once, inside the new environment, from the workflow's working directory
# (the repository root, where `snakemake` is started). It installs the cardigan package there in
# editable mode, without dependencies: cardigan.yaml already provides them from conda-forge.
set -euo pipefail
root="${CARDIGAN_SOURCE:-$PWD}"
if [ ! -f "$root/pyproject.toml" ] || [ ! -d "$root/src/cardigan" ]; then
    echo "cardigan.post-deploy.sh: $root is not the cardiGAN repository; run snakemake from" \
         "the repository root or set CARDIGAN_SOURCE to it" >&2
    exit 1
fi
python -m pip install --no-deps -e "$root"
