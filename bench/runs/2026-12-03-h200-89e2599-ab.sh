#!/bin/bash
# Vulkan A/B of the GLSL row-shader changes at 99ced9b (packs built here from the same commit with
# QMOE_GLSL_EXP=nospan,noa4 / nospan / noa4 set for gen_glsl.lua, a local switch not committed), without and with
# QMOE_VK_PIPELINE_STATS; CUDA decode repeated (default against QMOE_NO_SPAN_TAB,QMOE_NO_WORD_A4, alternating).
cd "$(dirname "$0")/../.."
N=resab; R=/tmp/$N; rm -rf $R; mkdir -p $R
save() { tar -C /tmp -czf ${OUT:-.}/res.tgz $N; }
for f in .gl/*.deb; do dpkg -x "$f" / >/dev/null 2>&1; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
export QMOE_CUDA_CACHE=$(mktemp -d)
{ date -u; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; } | tee $R/env.txt
for p in gpu gpu-nospan_noa4 gpu-nospan gpu-noa4; do mkdir -p .dev/x/$p && tar -C .dev/x/$p -xJf .dev/$p.tar.xz; done
B=.dev/x/gpu/gpu
M=/tmp/m.gguf
[ -s $M ] || $B/qmoe make-model --preset qwen3-30b-a3b --ftype q4_k_m --seed 1 -o $M > $R/make-model.log 2>&1
run() { n=$1; shift; env "$@" > $R/bench-$n.json 2> $R/bench-$n.err; echo "bench $n $?: $(python3 -c "import json;d=json.load(open('$R/bench-$n.json'));print(d['decode_tokens_per_s'],{s['label'][:12]:round(s['us_per_call'],1) for s in d.get('stages',[]) if s['calls_per_token']>=48})" 2>&1|tail -1)"; save; }
run vk-cur timeout 150 $B/qmoe bench -m $M --backend vulkan -p 8 -n 16 --repeats 3 --stages --json
run vk-old timeout 150 .dev/x/gpu-nospan_noa4/gpu/qmoe bench -m $M --backend vulkan -p 8 -n 16 --repeats 3 --stages --json
run vk-a4only timeout 150 .dev/x/gpu-nospan/gpu/qmoe bench -m $M --backend vulkan -p 8 -n 16 --repeats 3 --stages --json
run vk-spanonly timeout 150 .dev/x/gpu-noa4/gpu/qmoe bench -m $M --backend vulkan -p 8 -n 16 --repeats 3 --stages --json
QMOE_VK_PIPELINE_STATS=1 timeout 60 .dev/x/gpu-nospan_noa4/gpu/qmoe bench -m $M --backend vulkan -p 2 -n 2 --repeats 1 --json > /dev/null 2> $R/vk-old-stats.err
for i in 1 2; do
  run cuda-$i timeout 150 $B/qmoe bench -m $M --backend cuda -p 64 -n 64 --repeats 3 --json
  run cuda-neither-$i QMOE_CUDA_DEFINES=QMOE_NO_SPAN_TAB,QMOE_NO_WORD_A4 timeout 150 $B/qmoe bench -m $M --backend cuda -p 64 -n 64 --repeats 3 --json
done
save
