#!/bin/bash
# exp (main at f32fabd with bench/runs/2026-12-03-h200-pre.patch applied, built and packed as .dev/exp.tar.xz:
# qmoe and tests/{test_parity_cuda,test_add_rmsnorm,test_cuda_graph,test_model}) against main at f32fabd, one run: the f32 matvec staging its rows' first chunk before the grid wait (as the q8
# one does), and add_rmsnorm reading a and w before it where args.early allows. exp's parity, add_rmsnorm and graph
# tests, then decode f32 and q8 alternated A/B.
cd "$(dirname "$0")/../.."
N=respre; R=/tmp/$N; rm -rf $R; mkdir -p $R
save() { tar -C /tmp -czf ${OUT:-/tmp}/res.tgz $N; }
tar -C .dev -xJf .dev/gpu.tar.xz; tar -C .dev -xJf .dev/exp.tar.xz
A=.dev/gpu; B=.dev/exp
export QMOE_CUDA_CACHE=$(mktemp -d)
{ date -u; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; } | tee $R/env.txt
M=/tmp/m.gguf
( [ -s $M ] || $A/qmoe make-model --preset qwen3-30b-a3b --ftype q4_k_m --seed 1 -o $M > $R/make-model.log 2>&1 ) &
MK=$!
t1() { n=$1; t=$2; shift 2; env "$@" timeout 150 $B/tests/$t > $R/$n.log 2>&1; echo "$n exit $? ok=$(grep -c '^ok' $R/$n.log) notok=$(grep -c '^not ok' $R/$n.log) skip=$(grep -c '^skip' $R/$n.log)"; grep '^not ok' $R/$n.log | head -5; }
t1 parity test_parity_cuda QMOE_TEST_REQUIRE_BACKEND=1
t1 add_rmsnorm test_add_rmsnorm
t1 cuda_graph test_cuda_graph QMOE_TEST_REQUIRE_BACKEND=1
t1 model test_model
wait $MK; echo "make-model $?"; save
run() { n=$1; shift; env "$@" > $R/bench-$n.json 2> $R/bench-$n.err; echo "bench $n $?: $(python3 -c "import json;d=json.load(open('$R/bench-$n.json'));print(d['prefill_tokens_per_s'],d['decode_tokens_per_s'],{s['label'][:14]:round(s['us_per_call'],1) for s in d.get('stages',[])})" 2>&1|tail -1)"; save; }
Q="--backend cuda --acc q8 -p 64 -n 64 --repeats 3 --json"
F="--backend cuda -p 64 -n 64 --repeats 3 --json"
run main-f32-stages timeout 60 $A/qmoe bench -m $M $F --stages
run exp-f32-stages timeout 60 $B/qmoe bench -m $M $F --stages
run main-q8-a timeout 40 $A/qmoe bench -m $M $Q
run exp-q8-a timeout 40 $B/qmoe bench -m $M $Q
run main-f32-a timeout 40 $A/qmoe bench -m $M $F
run exp-f32-a timeout 40 $B/qmoe bench -m $M $F
run main-q8-b timeout 40 $A/qmoe bench -m $M $Q
run exp-q8-b timeout 40 $B/qmoe bench -m $M $Q
save
