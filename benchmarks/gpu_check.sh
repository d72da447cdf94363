#!/usr/bin/env bash
# The CUDA backend on a real GPU (see benchmarks/gpu_check.py). Run from the repository root
# on a machine with an NVIDIA GPU, PyTorch (CUDA), numba and numba-cuda installed; lark and
# graphviz come as wheels in .whl/ where the machine has no package index:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl \
#       lark graphviz
# Results go to $OUT (default ./gpu_out): cuda_tests.txt, gpu.json, gpu_log.txt.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
site=$(mktemp -d)
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target "$site" .whl/*.whl || exit 1
fi
python3 -m pip install -q --no-index --no-deps --no-build-isolation --target "$site" . || exit 1
export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu_log.txt"
python3 -c "import numba, numba_cuda, torch; print('numba', numba.__version__, 'numba-cuda', \
numba_cuda.__version__, 'torch', torch.__version__)" 2>&1 | tee -a "$OUT/gpu_log.txt"

# 1. the CUDA kernel tests (the simulator's suite) on the real GPU, small tiles as in CI
CNNC_CUDA_GPU=1 CNNC_CUDA_TILE=4 timeout "${TESTS_TIMEOUT:-240}" python3 -m pytest -q -x \
    -p no:cacheprovider tests/cuda_sim 2>&1 | tail -40 | tee "$OUT/cuda_tests.txt"

# 2. every network family against PyTorch on the same GPU, and timings
timeout "${NETWORKS_TIMEOUT:-300}" python3 benchmarks/gpu_check.py --out "$OUT/gpu.json" "$@" \
    2>&1 | tee -a "$OUT/gpu_log.txt" | tail -60
