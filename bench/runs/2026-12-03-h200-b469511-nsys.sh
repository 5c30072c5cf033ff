#!/bin/bash
# Where a decode step's time goes inside the graph (b469511). Planned: Nsight Systems with graph-node tracing of f32
# and q8 decode; the GPU machine has no nsys ("nsys: command not found"), so docs/gpu-results.md uses the QMOE_EMPTY_*
# runs instead. What it gave: Nsight Compute of the q8 moe_down, gate+up, the router and the small stages (speed of
# light, warp states, launch stats, occupancy, memory), bench/results/2026-12-03-h200-b469511-ncu-q8.csv.
cd "$(dirname "$0")/../.."
N=resnsys; R=${OUT:-/tmp}/$N; rm -rf $R; mkdir -p $R
tar -C .dev -xJf .dev/gpu.tar.xz
B=.dev/gpu
export QMOE_CUDA_CACHE=$(mktemp -d)
{ date -u; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; which nsys ncu; nsys --version; } > $R/env.txt 2>&1
M=/tmp/m.gguf
[ -s $M ] || $B/qmoe make-model --preset qwen3-30b-a3b --ftype q4_k_m --seed 1 -o $M > $R/make-model.log 2>&1
echo "make-model $?"
for a in q8 f32; do
  timeout 150 nsys profile -o /tmp/d-$a --force-overwrite true --trace cuda --cuda-graph-trace node \
    $B/qmoe bench -m $M --backend cuda --acc $a -p 16 -n 32 --repeats 1 --json > $R/bench-$a.json 2> $R/nsys-$a.err
  echo "nsys $a $?"
  nsys stats --report cuda_gpu_trace --format csv -o /tmp/t-$a /tmp/d-$a.nsys-rep > /dev/null 2>> $R/nsys-$a.err
  ls /tmp/t-$a* >> $R/nsys-$a.err 2>&1
  xz -c /tmp/t-${a}_cuda_gpu_trace.csv > $R/trace-$a.csv.xz 2>> $R/nsys-$a.err
done
QMOE_NO_GRAPH=1 timeout 200 ncu --cache-control all --clock-control none \
    -k regex:'^qmoe_(moe_down__q[0-9a-z_]*__q8|router_topk__f32|add_rmsnorm__f32|qk_norm_rope__f32|attention__f32|moe_gate_up_swiglu__q4_k__q8)$' --launch-count 7 \
    --section SpeedOfLight --section WarpStateStats --section LaunchStats --section Occupancy --section MemoryWorkloadAnalysis --csv \
    $B/qmoe run -m $M --backend cuda --acc q8 --tokens 5 -n 2 > $R/ncu.csv 2> $R/ncu.err
echo "ncu $?"
ls -la $R
