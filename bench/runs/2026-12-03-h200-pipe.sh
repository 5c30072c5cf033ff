#!/bin/bash
# moe_down's items each a cp.async group of their own (computed as their rows arrive): the CUDA parity test, then
# decode f32 and q8 with stages.
cd "$(dirname "$0")/../.."
N=respipe; R=/tmp/$N; rm -rf $R; mkdir -p $R
save() { tar -C /tmp -czf ${OUT:-/tmp}/res.tgz $N; }
tar -C .dev -xJf .dev/gpu.tar.xz
B=.dev/gpu
export QMOE_CUDA_CACHE=$(mktemp -d)
{ date -u; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; } | tee $R/env.txt
M=/tmp/m.gguf
( [ -s $M ] || $B/qmoe make-model --preset qwen3-30b-a3b --ftype q4_k_m --seed 1 -o $M > $R/make-model.log 2>&1 ) &
MK=$!
t1() { t=$1; QMOE_TEST_REQUIRE_BACKEND=1 timeout 240 $B/tests/$t > $R/$t.log 2>&1; echo "$t exit $? ok=$(grep -c '^ok' $R/$t.log) notok=$(grep -c '^not ok' $R/$t.log) skip=$(grep -c '^skip' $R/$t.log)"; grep '^not ok' $R/$t.log | head -5; save; }
t1 test_parity_cuda
wait $MK; echo "make-model $?"
run() { n=$1; shift; env "$@" > $R/bench-$n.json 2> $R/bench-$n.err; echo "bench $n $?: $(python3 -c "import json;d=json.load(open('$R/bench-$n.json'));print(d['prefill_tokens_per_s'],d['decode_tokens_per_s'],d['fraction_of_copy_bandwidth'],{s['label'][:14]:round(s['us_per_call'],1) for s in d.get('stages',[])})" 2>&1|tail -1)"; save; }
run q8-stages timeout 120 $B/qmoe bench -m $M --backend cuda --acc q8 -p 64 -n 64 --repeats 3 --stages --json
run f32-stages timeout 120 $B/qmoe bench -m $M --backend cuda -p 64 -n 64 --repeats 3 --stages --json
run q8-b timeout 120 $B/qmoe bench -m $M --backend cuda --acc q8 -p 64 -n 64 --repeats 3 --json
run f32-b timeout 120 $B/qmoe bench -m $M --backend cuda -p 64 -n 64 --repeats 3 --json
t1 test_model
