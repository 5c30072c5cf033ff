#!/bin/bash
# exp = f32fabd (packed as .dev/exp.tar.xz: qmoe and its tests), main = 49e410c. Branch exp (moe_down asks for its first items' rows before the grid wait where the launch before it does not write
# ids: kernel_args.early) against main at 49e410c (the router asking for its weights before the wait), one run:
# exp's graph test (the early bits, and moe_down after router_topk and after gate+up as graphs against launches on
# the stream), parity, router NaN, the model on CUDA; then decode q8 and f32 alternated A/B.
cd "$(dirname "$0")/../.."
N=researly; R=/tmp/$N; rm -rf $R; mkdir -p $R
save() { tar -C /tmp -czf ${OUT:-/tmp}/res.tgz $N; }
tar -C .dev -xJf .dev/gpu.tar.xz; tar -C .dev -xJf .dev/exp.tar.xz
A=.dev/gpu; B=.dev/exp
export QMOE_CUDA_CACHE=$(mktemp -d)
{ date -u; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; } | tee $R/env.txt
M=/tmp/m.gguf
( [ -s $M ] || $A/qmoe make-model --preset qwen3-30b-a3b --ftype q4_k_m --seed 1 -o $M > $R/make-model.log 2>&1 ) &
MK=$!
t1() { n=$1; t=$2; shift 2; env "$@" timeout 200 $B/tests/$t > $R/$n.log 2>&1; echo "$n exit $? ok=$(grep -c '^ok' $R/$n.log) notok=$(grep -c '^not ok' $R/$n.log) skip=$(grep -c '^skip' $R/$n.log)"; grep '^not ok' $R/$n.log | head -5; }
for i in 1 2 3; do t1 cuda_graph-$i test_cuda_graph QMOE_TEST_REQUIRE_BACKEND=1; done
t1 parity test_parity_cuda QMOE_TEST_REQUIRE_BACKEND=1
t1 router_nan test_router_nan
t1 model test_model
wait $MK; echo "make-model $?"; save
run() { n=$1; shift; env "$@" > $R/bench-$n.json 2> $R/bench-$n.err; echo "bench $n $?: $(python3 -c "import json;d=json.load(open('$R/bench-$n.json'));print(d['prefill_tokens_per_s'],d['decode_tokens_per_s'],{s['label'][:14]:round(s['us_per_call'],1) for s in d.get('stages',[])})" 2>&1|tail -1)"; save; }
Q="--backend cuda --acc q8 -p 64 -n 64 --repeats 3 --json"
F="--backend cuda -p 64 -n 64 --repeats 3 --json"
run main-q8-stages timeout 100 $A/qmoe bench -m $M $Q --stages
run exp-q8-stages timeout 100 $B/qmoe bench -m $M $Q --stages
run main-q8-a timeout 60 $A/qmoe bench -m $M $Q
run exp-q8-a timeout 60 $B/qmoe bench -m $M $Q
run main-f32-a timeout 60 $A/qmoe bench -m $M $F
run exp-f32-a timeout 60 $B/qmoe bench -m $M $F
run main-q8-b timeout 60 $A/qmoe bench -m $M $Q
run exp-q8-b timeout 60 $B/qmoe bench -m $M $Q
run main-f32-b timeout 60 $A/qmoe bench -m $M $F
run exp-f32-b timeout 60 $B/qmoe bench -m $M $F
ls -la $R | head -5; save
