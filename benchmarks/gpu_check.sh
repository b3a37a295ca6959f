#!/usr/bin/env bash
# Every GPU check and measurement of harmonia in one run, under 8 minutes on one GPU:
#   (a) pytest -m gpu: tests/test_gpu_inference.py (bf16/fp16 parity on a 10 s clip, SDPA kernels,
#       ensembles, compile) and tests/train (the pre-training GPU tests)
#   (b) inference throughput, peak GPU memory and host RSS of BEATs-base, Dasheng-base and the full
#       cmu-aist-icme2025 ensemble with random full-size weights in fp16, against the T4 budget
#   (c) pre-training step tokens/s and MFU of beats_base and beats_large_* in bf16 autocast
#   (d) fused attention (SDPA) against hand-written attention on the GPU
# then prints one summary block for the README. Each phase has its own time limit; a phase that
# fails or runs out of time is reported and the next one still runs; the exit code is non-zero if
# any phase failed.
#
#   bash benchmarks/gpu_check.sh                 # on a GPU machine, from anywhere
#   bash benchmarks/gpu_check.sh --dry-run       # CPU smoke of every phase on tiny models
#   OUT=/tmp/gc PYTHON=.venv/bin/python bash benchmarks/gpu_check.sh
set -uo pipefail

DRY=0
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY=1 ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument '$arg' (expected --dry-run or --help)" >&2; exit 2 ;;
  esac
done

cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
OUT=${OUT:-/tmp/harmonia-gpu-check}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
FAILED=()
T0=$SECONDS

if [ "$DRY" = 0 ] && ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu_check.sh: torch sees no CUDA device; run on a GPU machine with a CUDA build of torch," \
       "or use --dry-run for the CPU smoke test" >&2
  exit 2
fi
"$PY" -c "import torch; print('torch', torch.__version__, '|', torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU (dry run)')"

# phase NAME LIMIT_S LOG command...: run with a time limit, keep stdout in $OUT/LOG
phase() {
  local name=$1 limit=$2 log=$3
  shift 3
  local t=$SECONDS
  echo "== $name (limit ${limit} s)"
  timeout -k 15 "$limit" "$@" > "$OUT/$log"
  local rc=$?
  tail -n 25 "$OUT/$log"
  echo "== $name: exit $rc after $((SECONDS - t)) s (total $((SECONDS - T0)) s)"
  if [ $rc -ne 0 ]; then FAILED+=("$name (exit $rc$([ $rc -eq 124 ] && echo ', time limit'))"); fi
}

if [ "$DRY" = 1 ]; then
  phase "tests (gpu marker: collected, skipped without a GPU)" 300 pytest.log \
    "$PY" -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu_inference.py tests/train
  phase "inference (dry run)" 300 infer.jsonl "$PY" benchmarks/gpu_bench.py infer --dry-run --work "$OUT/ckpt"
  phase "pre-training step (dry run)" 300 pretrain.jsonl "$PY" benchmarks/gpu_bench.py pretrain --dry-run
  phase "attention (dry run)" 300 attention.log \
    "$PY" benchmarks/attention.py --seconds 1 --batches 1 --rounds 1 --repeats 1 --families dasheng
else
  phase "tests (pytest -m gpu)" 180 pytest.log \
    "$PY" -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu_inference.py tests/train
  phase "inference: BEATs-base, Dasheng-base, cmu-aist-icme2025 in fp16" 160 infer.jsonl \
    "$PY" benchmarks/gpu_bench.py infer --dtype float16 --batch 1 8 --repeats 5 --work "$OUT/ckpt" \
      --model openbeats-base-i1 dasheng-base cmu-aist-icme2025
  phase "pre-training step: beats_base, beats_large in bf16" 90 pretrain.jsonl \
    "$PY" benchmarks/gpu_bench.py pretrain --recipe beats_base beats_large_speech_heavy --batch 32 96 --steps 4
  phase "attention: SDPA vs hand-written, fp16" 45 attention.log \
    "$PY" benchmarks/attention.py --device cuda --dtype float16 --batches 8 --rounds 2 --repeats 3
fi

echo
echo "================ summary (paste into the README's benchmark section) ================"
"$PY" benchmarks/gpu_bench.py summary "$OUT/infer.jsonl" "$OUT/pretrain.jsonl"
echo
grep -A20 '^| model | batch | manual' "$OUT/attention.log" || echo "(attention benchmark gave no table)"
echo
grep -E '(passed|failed|skipped|error)' "$OUT/pytest.log" | tail -n 1
echo "total $((SECONDS - T0)) s; logs in $OUT"
if [ ${#FAILED[@]} -gt 0 ]; then
  printf 'FAILED: %s\n' "${FAILED[@]}"
  exit 1
fi
echo "all phases passed"
