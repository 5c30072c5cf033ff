#!/bin/bash
# Nsight Compute of the final CUDA row kernels (the one-token entries: the prefill's lm_head, then layer 0's
# q, k, v, o, gate+up, down and layer 1's q of the first decode step): speed of light, warp states, scheduler,
# occupancy, compute workload, instruction statistics.
cd "$(dirname "$0")/../.."
N=resncu; R=${OUT:-/tmp}/$N; rm -rf $R; mkdir -p $R   # straight under $OUT: a cut run still returns what it wrote
save() { :; }
tar -C .dev -xJf .dev/gpu.tar.xz
B=.dev/gpu
export QMOE_CUDA_CACHE=$(mktemp -d)
{ date -u; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; } | tee $R/env.txt
M=/tmp/m.gguf
[ -s $M ] || $B/qmoe make-model --preset qwen3-30b-a3b --ftype q4_k_m --seed 1 -o $M > $R/make-model.log 2>&1
echo "make-model $?"
QMOE_NO_GRAPH=1 timeout 240 ncu --cache-control none --clock-control none \
    -k regex:'^qmoe_(matvec|moe_gate_up_swiglu|moe_down)__q[0-9a-z_]*__f32$' --launch-count 8 \
    --section SpeedOfLight --section WarpStateStats --section SchedulerStats --section Occupancy \
    --section ComputeWorkloadAnalysis --section InstructionStats --csv \
    $B/qmoe run -m $M --backend cuda --tokens 5 -n 2 > $R/ncu-rows.csv 2> $R/ncu-rows.err
echo "ncu $?"; save
