#!/usr/bin/env bash
# One device session for the CUDA shift-wise op: GPU tests, op benchmark, short Nsight Compute
# profiles (stage-1 and stage-4 bf16 kernels; stage-1 tensor-core kernels at density 1.0 and 0.3).
# Writes logs / JSON to $OUT (default bench/results).
# Usage (repo root, on a GPU machine):  bash bench/gpu_session.sh [--no-tests] [--no-bench] [--no-ncu]
set -u
OUT=${OUT:-bench/results}
mkdir -p "$OUT"
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
TESTS=1; BENCH=1; NCU=1
for a in "$@"; do case $a in --no-tests) TESTS=0;; --no-bench) BENCH=0;; --no-ncu) NCU=0;; esac; done
# the machine and versions, printed and put at the head of the test log so that the log names them
MACHINE=$( { nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv,noheader || true
  python3 -c "import torch, cupy; print('torch', torch.__version__, 'CUDA', torch.version.cuda, 'cuDNN',
torch.backends.cudnn.version(), 'cupy', cupy.__version__, torch.cuda.get_device_name())"; } 2>&1 )
echo "$MACHINE"
rc=0
if [ $TESTS = 1 ]; then
  t0=$(date +%s)
  TEST_CMD=(python3 -m pytest -q --maxfail=10 -p no:cacheprovider tests/test_kernels_compile.py tests/test_cuda_op.py
            -o addopts="" --junitxml="$OUT/gpu_tests.xml")
  { date -u +%FT%TZ; echo "$MACHINE"; echo "PYTHONPATH=src ${TEST_CMD[*]//"$OUT"/\$OUT}"; } | sed 's/^/# /' > "$OUT/gpu_tests.log"
  "${TEST_CMD[@]}" >> "$OUT/gpu_tests.log" 2>&1 || rc=1
  tail -n 25 "$OUT/gpu_tests.log"; echo "tests took $(( $(date +%s) - t0 )) s (rc=$rc)"
fi
if [ $NCU = 1 ] && command -v ncu >/dev/null; then
  # stage 1 (tensor-core kernels: fwd, bwd, cross_grad) and stage 4 (7x7 planes: v2 fwd, bwd)
  for spec in "1 3" "4 2"; do
    set -- $spec
    timeout 150 ncu --kernel-name regex:swc_ --launch-skip $2 --launch-count $2 \
        --section SpeedOfLight --section Occupancy --section LaunchStats --section MemoryWorkloadAnalysis \
        --section WarpStateStats python3 bench/op_profile.py $1 > "$OUT/ncu_stage$1_bf16.txt" 2>&1 \
        || echo "ncu stage $1 failed/timed out"
    grep -E "swc_|Duration|Compute \(SM\) Throughput|Memory Throughput|Achieved Occupancy|Registers Per" \
        "$OUT/ncu_stage$1_bf16.txt" | head -30
  done
  # the density gap: tensor-core kernels at stage 1, density 1.0 vs 0.3 (same instruction count)
  for d in 1.0 0.3; do
    timeout 100 ncu --kernel-name regex:swc_ --launch-skip 3 --launch-count 3 \
        --metrics gpu__time_duration.sum,smsp__inst_executed.sum,sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active \
        python3 bench/op_profile.py 1 $d > "$OUT/ncu_tc_stage1_density$d.txt" 2>&1 || echo "ncu density $d failed"
    grep -E "swc_|duration|inst_executed" "$OUT/ncu_tc_stage1_density$d.txt"
  done
fi
if [ $BENCH = 1 ]; then
  python3 bench/op_bench.py --out "$OUT" 2>&1 | tee "$OUT/op_bench.log" | tail -n 12 || rc=1
fi
exit $rc
