#!/bin/bash
# The launch chain's floor and each stage's cost inside the decode graph: q8 decode with every kernel, then with
# QMOE_CUDA_DEFINES=QMOE_EMPTY_ALL (every kernel's threads exit at once: only the graph's launches and PDL edges
# are left) and with one stage's kernels emptied at a time (QMOE_EMPTY_<STAGE>); v's projection in a lane of its
# own (3 lanes) against 2 (QMOE_CUDA_LANES=2, v after k as before). Outputs are meaningless in the
# emptied runs; only their time counts.
cd "$(dirname "$0")/../.."
N=resempty; R=${OUT:-/tmp}/$N; rm -rf $R; mkdir -p $R
tar -C .dev -xJf .dev/gpu.tar.xz
B=.dev/gpu
export QMOE_CUDA_CACHE=$(mktemp -d)
{ date -u; git rev-parse --short HEAD 2>/dev/null; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; } > $R/env.txt 2>&1
M=/tmp/m.gguf
[ -s $M ] || $B/qmoe make-model --preset qwen3-30b-a3b --ftype q4_k_m --seed 1 -o $M > $R/make-model.log 2>&1
run() { n=$1; shift; env "$@" > $R/bench-$n.json 2> $R/bench-$n.err; echo "bench $n $?: $(python3 -c "import json;d=json.load(open('$R/bench-$n.json'));print(d['decode_tokens_per_s'], round(1e6/d['decode_tokens_per_s'],1),'us/token')" 2>&1|tail -1)"; }
for e in none ALL ADD_RMSNORM QK_NORM_ROPE ROUTER_TOPK ATTENTION MOE_DOWN MOE_GATE_UP_SWIGLU MATVEC ARGMAX; do
  run q8-$e QMOE_CUDA_DEFINES=QMOE_EMPTY_$e timeout 100 $B/qmoe bench -m $M --backend cuda --acc q8 -p 16 -n 48 --repeats 3 --json
done
run q8-lanes2 QMOE_CUDA_LANES=2 timeout 100 $B/qmoe bench -m $M --backend cuda --acc q8 -p 16 -n 48 --repeats 3 --json
run q8-lanes3 timeout 100 $B/qmoe bench -m $M --backend cuda --acc q8 -p 16 -n 48 --repeats 3 --json
run f32-none timeout 100 $B/qmoe bench -m $M --backend cuda -p 16 -n 48 --repeats 3 --json
run q8-ALL-nopdl QMOE_CUDA_PDL=0 QMOE_CUDA_DEFINES=QMOE_EMPTY_ALL timeout 100 $B/qmoe bench -m $M --backend cuda --acc q8 -p 16 -n 48 --repeats 3 --json
run q8-ALL-nobranch QMOE_CUDA_NO_BRANCH=1 QMOE_CUDA_DEFINES=QMOE_EMPTY_ALL timeout 100 $B/qmoe bench -m $M --backend cuda --acc q8 -p 16 -n 48 --repeats 3 --json
