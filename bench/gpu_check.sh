#!/usr/bin/env bash
# The GPU check: one script for any CUDA machine, about 5 minutes on one GPU.
#
#   bash bench/gpu_check.sh                                # on the GPU machine
#   CARDIGAN_GPU_CHECK_SMOKE=1 bash bench/gpu_check.sh     # CPU smoke run (CI): tiny sizes
#
# Needs the project's dependencies that the check imports (not the imaging stack, MONAI or
# Snakemake) with a CUDA build of torch; those a GPU machine without PyPI lacks come as wheels in
# .whl/ (GPU_CHECK_WHEELS), fetched beforehand by bench/gpu_wheels.sh and installed here before the
# first section. Nothing runs on the GPU until they all import. Every section runs under
# `timeout` and writes its output to $GPU_CHECK_OUT/<section>.txt (default results/gpu_check/) as
# it goes; summary.txt collects each section's last lines and exit status, so a section that
# hangs or fails costs only its own time box. Sections:
#   cuda_tests       the CUDA-only tests (pytest -m cuda: fp32 spectral norm under autocast, a
#                    bf16 + channels-last iteration with no host-device sync, RNG state, ...)
#   iter_fp32        training iteration, 256 px, ngf/ndf 64, SPADE hidden 128, fp32 (TF32 off):
#                    images/s, peak memory, FLOPs and model-FLOP utilisation (MFU)
#   iter_bf16        the same in bf16 autocast, NCHW            (to choose the layout per device)
#   iter_bf16_cl     bf16 + channels-last + cuDNN autotune, and the top kernels by time
#   iter_compile     bf16 + channels-last + torch.compile
#   max_batch        the largest batch of the bf16 + channels-last iteration that fits at 256 px
#   sample           bench/sample.py on CUDA (1,000 images)
#   kill_resume      a 100-iteration real training run killed (SIGKILL) and resumed
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
# The Python that holds torch: python3 unless PYTHON names another (GPU images need not have a
# plain "python").
PY=${PYTHON:-python3}
OUT=${GPU_CHECK_OUT:-results/gpu_check}
mkdir -p "$OUT"
: > "$OUT/summary.txt"

WHEELS=${GPU_CHECK_WHEELS:-.whl}
# Every cardigan module the check's scripts reach (found by the code fingerprint's import walk),
# imported: a package missing on this machine shows here, before any section.
imports_ok() {
    "$PY" - bench/train_step.py bench/max_batch.py bench/sample.py bench/kill_resume.py \
        tests/test_cuda.py 2> "$OUT/imports.txt" <<'PYEOF'
import importlib, sys
import pytest
from cardigan.core.code_fingerprint import module_closure, package_root
root = package_root()
for path in module_closure(sys.argv[1:]):
    parts = path.relative_to(root).with_suffix("").parts
    importlib.import_module(".".join(("cardigan", *(p for p in parts if p != "__init__"))))
PYEOF
}
if ! imports_ok && compgen -G "$WHEELS/*.whl" > /dev/null; then
    SITE=$(mktemp -d)
    "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$SITE" "$WHEELS"/*.whl
    export PYTHONPATH="$SITE:$PYTHONPATH"
    echo "installed $(ls "$WHEELS" | wc -l) wheel(s) from $WHEELS" | tee -a "$OUT/summary.txt"
fi
imports_ok || {
    tail -n 3 "$OUT/imports.txt" | tee -a "$OUT/summary.txt"
    echo "gpu_check: the check's imports fail (above); fetch the missing packages as wheels" \
         "where PyPI is reachable (bash bench/gpu_wheels.sh) and bring .whl/ along" \
        | tee -a "$OUT/summary.txt"
    exit 2; }

if [ "${CARDIGAN_GPU_CHECK_SMOKE:-0}" = 1 ]; then
    DEV=cpu; SIZE=64; NF=4; HID=8; NLD=2; BATCH=2; ITERS=1; WARM=1; KILL_IT=8; SCALE=4
    SAMPLE="--counts 100 --devices cpu --threads 1"
    KILL="--size 64 --ngf 4 --spade-hidden 8 --batch 2 --threads 1"
    COMPILE=""  # inductor on a CPU takes minutes: the smoke run checks the section, not compile
else
    DEV=cuda; SIZE=256; NF=64; HID=128; NLD=4; BATCH=16; ITERS=20; WARM=5; KILL_IT=100; SCALE=1
    SAMPLE="--counts 1000 --devices cuda"
    KILL="--size 128 --ngf 16 --batch 4"
    COMPILE="--compile"
    "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' || {
        echo "no CUDA device visible (set CARDIGAN_GPU_CHECK_SMOKE=1 for the CPU smoke run)"
        exit 2; }
fi
"$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda,
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU")' \
    | tee -a "$OUT/summary.txt"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader \
    >> "$OUT/summary.txt" 2>/dev/null

FAILED=0
section() {  # section NAME SECONDS COMMAND...: time-boxed, output saved as it comes
    local name=$1 limit=$(( $2 * SCALE )); shift 2
    echo "== $name (time box ${limit} s): $*" | tee -a "$OUT/summary.txt"
    local t0=$SECONDS
    timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.txt" 2>&1
    local rc=$?
    tail -n 25 "$OUT/$name.txt" | tee -a "$OUT/summary.txt"
    echo "-- $name: exit $rc after $(( SECONDS - t0 )) s" | tee -a "$OUT/summary.txt"
    [ "$rc" = 0 ] || FAILED=$(( FAILED + 1 ))
}

BENCH=("$PY" bench/train_step.py --device "$DEV" --size "$SIZE" --ngf "$NF" --ndf "$NF"
       --spade-hidden "$HID" --n-layers-D "$NLD" --batch "$BATCH" --iters "$ITERS"
       --warmup "$WARM")
# `-o addopts=`: the project's pytest options start xdist workers; the GPU image has no xdist.
section cuda_tests 40 "$PY" -m pytest -o addopts= -m cuda tests/test_cuda.py -q -rs
section iter_fp32 35 "${BENCH[@]}" --paths plain --flops --json "$OUT/iter_fp32.json"
section iter_bf16 25 "${BENCH[@]}" --paths bf16 --flops --json "$OUT/iter_bf16.json"
section iter_bf16_cl 30 "${BENCH[@]}" --paths optimised --flops --profile 15 \
    --json "$OUT/iter_bf16_cl.json"
section iter_compile 60 "${BENCH[@]}" --paths optimised $COMPILE --flops \
    --json "$OUT/iter_compile.json"
section max_batch 35 "$PY" bench/max_batch.py --device "$DEV" --size "$SIZE" --ngf "$NF" \
    --spade-hidden "$HID" --n-layers-D "$NLD" --start "$BATCH"
section sample 30 "$PY" bench/sample.py $SAMPLE
section kill_resume 40 "$PY" bench/kill_resume.py --device "$DEV" --iterations "$KILL_IT" $KILL
echo "gpu_check: $FAILED section(s) failed; outputs in $OUT" | tee -a "$OUT/summary.txt"
exit $(( FAILED > 0 ))
