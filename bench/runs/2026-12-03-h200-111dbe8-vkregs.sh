#!/bin/bash
# Vulkan row shaders and their registers: the GLSL of eb5845c (baseline) against packs built from this commit's
# tree with QMOE_GLSL_EXP=rowwise (stage one row's 16-byte loads, then its stores: half the staging registers),
# noxahead (x read at each step, not one step ahead) and both (a local switch in gen_glsl.lua, described in
# docs/gpu-results.md). Each: test_parity_vulkan, the pipeline statistics, decode with stages.
cd "$(dirname "$0")/../.."
N=resvk; R=/tmp/$N; rm -rf $R; mkdir -p $R
save() { tar -C /tmp -czf ${OUT:-.}/res.tgz $N; }
for f in .gl/*.deb; do dpkg -x "$f" / >/dev/null 2>&1; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
{ date -u; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; } | tee $R/env.txt
for p in gpu gpu-rowwise gpu-noxahead gpu-rowwise_noxahead; do mkdir -p .dev/x/$p && tar -C .dev/x/$p -xJf .dev/$p.tar.xz; done
M=/tmp/m.gguf
( [ -s $M ] || .dev/x/gpu/gpu/qmoe make-model --preset qwen3-30b-a3b --ftype q4_k_m --seed 1 -o $M > $R/make-model.log 2>&1 ) &
MK=$!
for p in gpu gpu-rowwise gpu-noxahead gpu-rowwise_noxahead; do
  QMOE_VK_DEVICE=NVIDIA QMOE_TEST_REQUIRE_BACKEND=1 timeout 120 .dev/x/$p/gpu/tests/test_parity_vulkan > $R/$p-parity.log 2>&1
  echo "$p parity exit $? ok=$(grep -c '^ok' $R/$p-parity.log) notok=$(grep -c '^not ok' $R/$p-parity.log)"
done
wait $MK; echo "make-model $?"; save
for p in gpu gpu-rowwise gpu-noxahead gpu-rowwise_noxahead; do
  QMOE_VK_PIPELINE_STATS=1 timeout 150 .dev/x/$p/gpu/qmoe bench -m $M --backend vulkan -p 8 -n 16 --repeats 3 --stages --json > $R/$p-bench.json 2> $R/$p-bench.err
  echo "$p bench $?: $(python3 -c "import json;d=json.load(open('$R/$p-bench.json'));print(d['decode_tokens_per_s'],{s['label'][:12]:round(s['us_per_call'],1) for s in d['stages'] if s['calls_per_token']>=48 or 'output' in s['label']})" 2>&1|tail -1)"
  grep -E "pipeline (matvec/q4_k|matvec/q6_k|moe_gate_up_swiglu/q4_k|moe_down/q4_k)/f32" $R/$p-bench.err | sed 's/ Binary.*Shared/ Shared/'
  save
done
