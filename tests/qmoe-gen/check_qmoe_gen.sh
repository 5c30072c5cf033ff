#!/bin/sh
# check_qmoe_gen.sh: qmoe-gen prints exactly what the build generated and embeds (CUDA sources, SPIR-V modules,
# GLSL and C sources), accepts the documented spellings, refuses bad input with the valid choices, and never
# writes binary SPIR-V to a terminal. Run from the repo root with QMOE_BIN=build (or build/san).
BIN=${QMOE_BIN:-build}
G="$BIN/qmoe-gen"
T=$(mktemp -d /tmp/qmoe-gen-check.XXXXXX)
trap 'rm -rf "$T"' EXIT
fails=0
ok() { echo "ok $1"; }
bad() { echo "not ok $1: $2"; fails=$((fails + 1)); }

# help
if "$G" --help >"$T/help" 2>&1 && grep -q "usage: qmoe-gen" "$T/help" && grep -q -- "--list" "$T/help"; then
  ok help
else bad help "--help did not print the usage"; fi

# --list: one line per contract variant, and every CUDA variant it lists prints the committed source
if "$G" --list >"$T/list" 2>"$T/err"; then
  n=$(sed -n 's/^\([0-9][0-9]*\) variants$/\1/p' "$T/list")
  lines=$(($(wc -l <"$T/list") - 2))
  ncu=$(ls generated/cuda/*.cu | wc -l)
  ncl=$(grep -c " cuda" "$T/list")
  if [ -n "$n" ] && [ "$n" -eq "$lines" ] && [ "$ncl" -eq "$ncu" ] && grep -q "^matvec  *q6_k  *f64  *c cuda glsl spirv" "$T/list"; then
    ok "list ($n variants, $ncl with CUDA)"
  else bad list "count '$n' vs $lines lines, $ncl CUDA variants vs $ncu files in generated/cuda"; fi
  mism=""
  while read -r stage qtype acc targets; do
    case " $targets " in *" cuda "*) ;; *) continue ;; esac
    stem=$stage; args="--stage $stage"
    [ "$qtype" != "-" ] && { stem="${stem}__$qtype"; args="$args --qtype $qtype"; }
    [ "$acc" != "-" ] && { stem="${stem}__$acc"; args="$args --acc $acc"; }
    # shellcheck disable=SC2086
    "$G" $args >"$T/cu" 2>"$T/err" || { mism="$mism $stem(exit)"; continue; }
    cmp -s "$T/cu" "generated/cuda/$stem.cu" || mism="$mism $stem"
    grep -q "^// qmoe-cuda: stage=$stage .*entry=qmoe_$stem " "$T/cu" || mism="$mism $stem(meta)"
  done <"$T/list"
  if [ -z "$mism" ]; then ok "list/cuda: every listed CUDA variant prints generated/cuda/<variant>.cu"
  else bad list/cuda "differs from generated/cuda:$mism"; fi
else bad list "$(cat "$T/err")"; fi

# spellings: q6k, q6_k, Q6_K; fp64, f64, F64
"$G" --qtype q6_k --acc f64 >"$T/a" 2>&1
"$G" --qtype q6k --acc fp64 >"$T/b" 2>&1
"$G" --qtype Q6_K --acc F64 --stage matvec --target cuda >"$T/c" 2>&1
"$G" --qtype=q6_k --acc=f64 --target=cuda >"$T/d" 2>&1
if cmp -s "$T/a" generated/cuda/matvec__q6_k__f64.cu && cmp -s "$T/a" "$T/b" && cmp -s "$T/a" "$T/c" && cmp -s "$T/a" "$T/d"; then
  ok "spellings (q6k q6_k Q6_K, fp64 f64 F64, --x=v)"
else bad spellings "outputs differ"; fi
"$G" --qtype q4k --acc fp32 --stage moe_down >"$T/a" 2>&1
if cmp -s "$T/a" generated/cuda/moe_down__q4_k__f32.cu; then ok "moe_down q4k fp32"; else bad "moe_down q4k fp32" "$(head -c 300 "$T/a")"; fi

# refusals: exit 2 and the valid choices
expect_refusal() { # name, grep pattern, args...
  name=$1; pat=$2; shift 2
  "$G" "$@" >"$T/out" 2>"$T/err"; rc=$?
  if [ "$rc" -eq 2 ] && grep -q -- "$pat" "$T/err" && [ ! -s "$T/out" ]; then ok "refuses $name"
  else bad "refuses $name" "exit $rc, stderr: $(head -c 300 "$T/err")"; fi
}
expect_refusal "unknown qtype" "valid: f32 f16 .*q6_k" --qtype q9_z --acc f32
expect_refusal "unknown acc" "valid: f32, fp32, f64, fp64" --qtype q6_k --acc f16
expect_refusal "unknown stage" "valid: matvec moe_gate_up_swiglu" --stage nope --acc f32
expect_refusal "unknown target" "valid: cuda, glsl, spirv, c" --qtype q6_k --acc f32 --target ptx
expect_refusal "missing acc" "give --acc f32 or --acc f64" --qtype q6_k
expect_refusal "qtype on a stage without qtypes" "does not vary by qtype" --stage rmsnorm --qtype q6_k --acc f32
expect_refusal "acc on a stage without accumulators" "does not vary by accumulator" --stage add --acc f32
expect_refusal "unknown option" "unknown argument" --qtype q6_k --acc f32 --bogus
expect_refusal "multi-pass spirv without --pass" "choose one with --pass" --stage argmax --target spirv

# SPIR-V: the embedded module is the build's build/spv/<variant>.spv; libshaderc's compilation matches it
"$G" --qtype q4_k --acc f32 --target spirv >"$T/m.spv" 2>"$T/err"
if cmp -s "$T/m.spv" build/spv/matvec__q4_k__f32.spv && [ "$(od -A n -t x4 -N 4 "$T/m.spv" | tr -d ' ')" = 07230203 ]; then
  ok "spirv: embedded module = build/spv/matvec__q4_k__f32.spv"
else bad spirv "$(cat "$T/err")"; fi
"$G" --stage argmax --target spirv --pass final -o "$T/s.spv" 2>"$T/err"
if [ -s "$T/s.spv" ] && cmp -s "$T/s.spv" build/spv/argmax.final.spv; then ok "spirv --pass final -o FILE"
else bad "spirv --pass" "$(cat "$T/err")"; fi
"$G" --qtype q6_k --acc f64 --stage moe_down --target spirv --compile -o "$T/c.spv" 2>"$T/err"
if [ -s "$T/c.spv" ] && spirv-val --target-env vulkan1.2 "$T/c.spv" 2>>"$T/err" && cmp -s "$T/c.spv" build/spv/moe_down__q6_k__f64.spv; then
  ok "spirv --compile (libshaderc) = the build's glslc module"
else bad "spirv --compile" "$(head -c 400 "$T/err")"; fi
if command -v script >/dev/null 2>&1; then
  script -qec "$G --qtype q4_k --acc f32 --target spirv" /dev/null >"$T/tty" 2>&1; rc=$?
  if [ "$rc" -ne 0 ] && grep -q "refusing to write a binary SPIR-V module to a terminal" "$T/tty" && ! grep -q "$(printf '\003\002\043\007')" "$T/tty"; then
    ok "spirv to a terminal is refused"
  else bad "spirv to a terminal" "exit $rc: $(head -c 200 "$T/tty")"; fi
else echo "skip spirv to a terminal: script(1) is not installed"; fi

# GLSL and C sources, also from another working directory (the source tree is found above the program)
ABS=$(cd "$BIN" && pwd)/qmoe-gen
(cd /tmp && "$ABS" --qtype q5_k --acc f32 --target glsl) >"$T/g" 2>"$T/err"
if cmp -s "$T/g" generated/glsl/matvec__q5_k__f32.comp; then ok "glsl (from another directory)"
else bad glsl "$(head -c 300 "$T/err")"; fi
"$G" --stage argmax --target glsl >"$T/g2" 2>"$T/err"
if [ "$(grep -c '^// ==== generated/glsl/argmax\.' "$T/g2")" -eq 2 ] && [ "$(ls generated/glsl/argmax.*.comp | wc -l)" -eq 2 ]; then
  ok "glsl: a multi-pass variant prints every pass"
else bad "glsl multi-pass" "$(head -c 300 "$T/err")"; fi
(cd /tmp && "$ABS" --qtype Q4_K --target c -o "$T/q.c") 2>"$T/err"
if cmp -s "$T/q.c" generated/c/quant_q4_k.c; then ok "c: the qtype's generated codec"
else bad c "$(head -c 300 "$T/err")"; fi
QMOE_SOURCE_DIR=/nonexistent "$G" --qtype q4_k --target c >"$T/o" 2>"$T/err"; rc=$?
if [ "$rc" -eq 1 ] && grep -q "QMOE_SOURCE_DIR" "$T/err"; then ok "c: a missing source tree is reported"
else bad "c missing tree" "exit $rc: $(cat "$T/err")"; fi

[ "$fails" -eq 0 ]
