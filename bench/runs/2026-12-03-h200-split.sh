#!/bin/bash
# .dev/split.tar.xz: qmoe and test_parity_cuda built from 7f3984c with d0625ea's template change applied. Branch q8-split (the first chunk's copies in two cp.async groups, matvec and gate+up, q8) against main's kernels
# (7f3984c) in the same run: parity of the split kernels, then q8 decode alternated A/B/A/B; then Nsight Compute of
# main's q8 row kernels with warp stall reasons (what holds moe_down and gate+up back).
cd "$(dirname "$0")/../.."
N=ressplit; R=/tmp/$N; rm -rf $R; mkdir -p $R
save() { tar -C /tmp -czf ${OUT:-/tmp}/res.tgz $N; }
tar -C .dev -xJf .dev/gpu.tar.xz; tar -C .dev -xJf .dev/split.tar.xz
A=.dev/gpu; B=.dev/split
export QMOE_CUDA_CACHE=$(mktemp -d)
{ date -u; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; } | tee $R/env.txt
M=/tmp/m.gguf
( [ -s $M ] || $A/qmoe make-model --preset qwen3-30b-a3b --ftype q4_k_m --seed 1 -o $M > $R/make-model.log 2>&1 ) &
MK=$!
QMOE_TEST_REQUIRE_BACKEND=1 timeout 200 $B/tests/test_parity_cuda > $R/split-parity.log 2>&1
echo "split parity exit $? ok=$(grep -c '^ok' $R/split-parity.log) notok=$(grep -c '^not ok' $R/split-parity.log)"; grep '^not ok' $R/split-parity.log | head -5
wait $MK; echo "make-model $?"; save
run() { n=$1; shift; env "$@" > $R/bench-$n.json 2> $R/bench-$n.err; echo "bench $n $?: $(python3 -c "import json;d=json.load(open('$R/bench-$n.json'));print(d['prefill_tokens_per_s'],d['decode_tokens_per_s'],{s['label'][:14]:round(s['us_per_call'],1) for s in d.get('stages',[])})" 2>&1|tail -1)"; save; }
run main-q8-stages timeout 100 $A/qmoe bench -m $M --backend cuda --acc q8 -p 64 -n 64 --repeats 3 --stages --json
run split-q8-stages timeout 100 $B/qmoe bench -m $M --backend cuda --acc q8 -p 64 -n 64 --repeats 3 --stages --json
run main-q8-a timeout 60 $A/qmoe bench -m $M --backend cuda --acc q8 -p 64 -n 64 --repeats 3 --json
run split-q8-a timeout 60 $B/qmoe bench -m $M --backend cuda --acc q8 -p 64 -n 64 --repeats 3 --json
run main-q8-b timeout 60 $A/qmoe bench -m $M --backend cuda --acc q8 -p 64 -n 64 --repeats 3 --json
run split-q8-b timeout 60 $B/qmoe bench -m $M --backend cuda --acc q8 -p 64 -n 64 --repeats 3 --json
QMOE_NO_GRAPH=1 timeout 150 ncu --cache-control all --clock-control none \
    -k regex:'^qmoe_(moe_down__q[0-9a-z_]*__q8|moe_gate_up_swiglu__q4_k__q8|matvec__q4_k__q8|router_topk__f32)$' --launch-skip 8 --launch-count 6 \
    --section SpeedOfLight --section WarpStateStats --section LaunchStats --section Occupancy --section MemoryWorkloadAnalysis --section SchedulerStats --csv \
    $A/qmoe run -m $M --backend cuda --acc q8 --tokens 5 -n 2 > $R/ncu.csv 2> $R/ncu.err
echo "ncu $?"; save
