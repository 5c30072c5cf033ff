#!/usr/bin/env bash
# bench/gpu-run.sh: the model-level GPU run, from a tree built elsewhere (the GPU machine has no Lua,
# libyaml or shaderc): the GPU tests (tests/gpu.sh), the Hugging Face oracle on CUDA and NVIDIA-Vulkan,
# `qmoe diff` cpu vs cuda and cpu vs vulkan, and `qmoe bench` on the qwen3-30b-a3b preset (Q4_K_M).
# Results and logs go to $OUT (default ./gpu-out).
# Usage: bench/gpu-run.sh tests|bench [BUILD_DIR]     (BUILD_DIR holds qmoe, models/tiny.gguf and tests/)
#   tests: tests/gpu.sh, tests/oracle/check_oracle.py (cpu, vulkan, cuda), qmoe diff on the tiny model
#   bench: qmoe make-model --preset qwen3-30b-a3b, then qmoe bench (--json): cuda with --stages, cuda without
#          graphs (QMOE_NO_GRAPH=1), cuda with the strided lane map, cuda f64, cuda decode at contexts 4k and
#          32k (--depth: zeroed cache rows instead of a long prefill), vulkan --stages. About 10 minutes of device time with the tests mode; the bench mode
#          alone needs ~5 (make-model takes ~55 s, each 512-token prefill ~2.5 s at today's speed).
# Environment: QMOE_WHEELS (default .whl): Python wheels to install first (gguf-py for the oracle check).
set -u
mode=${1:-}
B=${2:-.dev/gpu}
OUT=${OUT:-./gpu-out}
mkdir -p "$OUT"
case "$mode" in tests|bench) ;; -h|--help) sed -n '2,9p' "$0"; exit 0 ;; *) echo "usage: $0 tests|bench [BUILD_DIR]" >&2; exit 2 ;; esac
[ -x "$B/qmoe" ] || { echo "gpu-run: $B/qmoe is missing (copy a built tree's build/ there)" >&2; exit 1; }
# The Vulkan loader from the carried debs, NVIDIA's ICD (docs/vulkan.md).
if ! ldconfig -p 2>/dev/null | grep -q "libvulkan.so.1 " && ls .gl/*.deb >/dev/null 2>&1; then
  for f in .gl/*.deb; do dpkg -x "$f" / >/dev/null 2>&1; done; ldconfig
fi
icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
[ -f "$icd" ] && export VK_DRIVER_FILES=$icd
export QMOE_CUDA_CACHE=$(mktemp -d)
{ echo "date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"; echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)";
  nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv,noheader 2>&1; } | tee "$OUT/env.txt"
if [ "$mode" = tests ]; then
  W=${QMOE_WHEELS:-.whl}
  if ls "$W"/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$W"/*.whl &&
      export PYTHONPATH=/tmp/site
  fi
  QMOE_BUILD_DIR=$B OUT=$OUT bash tests/gpu.sh > "$OUT/gpu-tests-console.txt" 2>&1
  echo "gpu.sh exit $?"; tail -12 "$OUT/gpu-tests-console.txt"
  QMOE_BIN=$B PYTHONUNBUFFERED=1 timeout 300 python3 tests/oracle/check_oracle.py > "$OUT/oracle.log" 2>&1
  echo "oracle exit $?: $(grep -c '^ok' "$OUT/oracle.log") ok, $(grep -c '^not ok' "$OUT/oracle.log") not ok, $(grep -c '^skip' "$OUT/oracle.log") skip"
  grep -E '^(not ok|skip)' "$OUT/oracle.log" | head -20
  for be in cuda vulkan; do
    for acc in f32 f64; do
      "$B/qmoe" diff -m "$B/models/tiny.gguf" --backends cpu,$be --tokens 1,17,42,99,7,300,5,61 --acc $acc \
        --stages all --json > "$OUT/diff-cpu-$be-$acc.json" 2> "$OUT/diff-cpu-$be-$acc.err"
      echo "diff cpu,$be $acc: exit $? $(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print({k: d[k] for k in d if not isinstance(d[k], (list, dict))})' "$OUT/diff-cpu-$be-$acc.json" 2>&1 | head -c 400)"
    done
  done
  "$B/qmoe" diff -m "$B/models/tiny.gguf" --backends cpu,cuda --tokens 1,17,42,99,7,300,5,61 --plot "$OUT/diff-cpu-cuda.svg" > "$OUT/diff-cpu-cuda.txt" 2>&1
else
  M=/tmp/qwen3-30b-a3b-q4_k_m.gguf
  t0=$(date +%s)
  "$B/qmoe" make-model --preset qwen3-30b-a3b --ftype q4_k_m --seed 1 -o $M > "$OUT/make-model.log" 2>&1
  echo "make-model exit $? in $(( $(date +%s) - t0 )) s"
  ls -la $M
  # name | timeout | environment | qmoe bench arguments
  while IFS='|' read -r name lim envs args; do
    [ -n "$name" ] || continue
    env $envs timeout "$lim" "$B/qmoe" bench -m $M $args --json > "$OUT/bench-$name.json" 2> "$OUT/bench-$name.err"
    echo "bench $name exit $?: $(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print({k: d[k] for k in ("prefill_tokens_per_s","decode_tokens_per_s","fraction_of_copy_bandwidth","stage_us_per_token") if k in d})' "$OUT/bench-$name.json" 2>&1 | head -c 300)"
    tail -2 "$OUT/bench-$name.err"
  done <<'RUNS'
cuda|280|QMOE_GPU_RUN=1|--backend cuda -p 512 -n 128 --repeats 3 --stages
cuda-nograph|200|QMOE_NO_GRAPH=1|--backend cuda -p 512 -n 128 --repeats 3
cuda-strided|200|QMOE_CUDA_DEFINES=QMOE_LANE_STRIDED|--backend cuda -p 128 -n 64 --repeats 3 --stages
cuda-f64|200|QMOE_GPU_RUN=1|--backend cuda --acc f64 -p 64 -n 32 --repeats 3 --stages
cuda-ctx4k|120|QMOE_GPU_RUN=1|--backend cuda -p 16 -n 64 --repeats 3 --depth 4096
cuda-ctx32k|120|QMOE_GPU_RUN=1|--backend cuda -p 16 -n 64 --repeats 3 --depth 32768
vulkan|200|QMOE_GPU_RUN=1|--backend vulkan -p 16 -n 16 --repeats 3 --stages
RUNS
fi
