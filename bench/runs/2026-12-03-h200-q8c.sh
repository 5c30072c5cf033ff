#!/bin/bash
# third q8 run: moe_down asks for 4 items at once; q8 (docs/q8.md) on the H200: the CUDA GPU tests (q8 parity and tokens included), decode f32 against q8 with
# stages, alternating, prefill 512 both, the Hugging Face oracle (q8 per-layer cosine), Vulkan parity (q8 GLSL).
cd "$(dirname "$0")/../.."
N=resq8c; R=/tmp/$N; rm -rf $R; mkdir -p $R
save() { tar -C /tmp -czf ${OUT:-.}/res.tgz $N; }
tar -C .dev -xJf .dev/gpu.tar.xz
B=.dev/gpu
for f in .gl/*.deb; do dpkg -x "$f" / >/dev/null 2>&1; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
export QMOE_CUDA_CACHE=$(mktemp -d)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl > /dev/null 2>&1; export PYTHONPATH=/tmp/site
{ date -u; git rev-parse --short HEAD 2>/dev/null; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; } | tee $R/env.txt
M=/tmp/m.gguf
( [ -s $M ] || $B/qmoe make-model --preset qwen3-30b-a3b --ftype q4_k_m --seed 1 -o $M > $R/make-model.log 2>&1 ) &
MK=$!
t1() { t=$1; QMOE_TEST_REQUIRE_BACKEND=1 timeout 240 $B/tests/$t > $R/$t.log 2>&1; echo "$t exit $? ok=$(grep -c '^ok' $R/$t.log) notok=$(grep -c '^not ok' $R/$t.log) skip=$(grep -c '^skip' $R/$t.log)"; grep '^not ok' $R/$t.log | head -5; save; }
t1 test_parity_cuda
wait $MK; echo "make-model $?"; save
run() { n=$1; shift; env "$@" > $R/bench-$n.json 2> $R/bench-$n.err; echo "bench $n $?: $(python3 -c "import json;d=json.load(open('$R/bench-$n.json'));print(d['prefill_tokens_per_s'],d['decode_tokens_per_s'],d['fraction_of_copy_bandwidth'],{s['label'][:14]:round(s['us_per_call'],1) for s in d.get('stages',[])})" 2>&1|tail -1)"; save; }
run f32-stages timeout 150 $B/qmoe bench -m $M --backend cuda -p 64 -n 64 --repeats 3 --stages --json
run q8-stages timeout 150 $B/qmoe bench -m $M --backend cuda --acc q8 -p 64 -n 64 --repeats 3 --stages --json
run f32-a timeout 150 $B/qmoe bench -m $M --backend cuda -p 512 -n 64 --repeats 3 --json
run q8-a timeout 150 $B/qmoe bench -m $M --backend cuda --acc q8 -p 512 -n 64 --repeats 3 --json
run f32-b timeout 150 $B/qmoe bench -m $M --backend cuda -p 64 -n 64 --repeats 3 --json
run q8-b timeout 150 $B/qmoe bench -m $M --backend cuda --acc q8 -p 64 -n 64 --repeats 3 --json
run q8-ctx4096 timeout 150 $B/qmoe bench -m $M --backend cuda --acc q8 -p 16 -n 64 --depth 4096 --repeats 3 --json
for t in test_model test_cuda_graph; do t1 $t; done
QMOE_BIN=$B PYTHONUNBUFFERED=1 timeout 200 python3 tests/oracle/check_oracle.py > $R/oracle.log 2>&1; echo "oracle exit $?: $(grep -c '^ok' $R/oracle.log) ok, $(grep -c '^not ok' $R/oracle.log) not ok"; grep -E '^(not ok|skip)' $R/oracle.log | head; save
