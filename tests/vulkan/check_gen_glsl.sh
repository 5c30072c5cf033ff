#!/bin/sh
# check_gen_glsl.sh: codegen/gen_glsl.lua on fixture contract trees — a stage without a GLSL kernel rule and
# an unknown shader name fail loudly; a new quant format (a copy of q8_0 under a new name and type id) gets
# its variants with no hand-written code, and they compile and validate; output is deterministic and the
# committed generated/glsl/ files are what the generator writes. Run from the repository root.
# qmoe-test: normal-only
set -u
LUA=build/qmoe-lua
TMP=$(mktemp -d "${TMPDIR:-/tmp}/qmoe-gen-glsl.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
fails=0
check() { # NAME COND MESSAGE
  if [ "$2" = 1 ]; then echo "ok $1"; else echo "not ok $1: $3"; fails=1; fi
}

[ -x "$LUA" ] || { echo "not ok gen_glsl: $LUA is missing (run ./configure)"; exit 1; }

# 1. A stage contract with no GLSL kernel rule: the generator fails, naming the file and what to do.
mkdir -p "$TMP/a" && cp -r contracts/* "$TMP/a/"
next=$(ls contracts/stages/*.yaml | wc -l) # the next free order
sed "s/^name: add/name: softcap/; s/^trace: .*/trace: softcap/; s/^order: .*/order: $next/" contracts/stages/add.yaml \
  > "$TMP/a/stages/softcap.yaml"
out=$("$LUA" codegen/gen_glsl.lua --contracts "$TMP/a" --table --out "$TMP/a.c" 2>&1); rc=$?
check unknown_stage_fails "$([ $rc != 0 ] && [ ! -e "$TMP/a.c" ] &&
  printf '%s' "$out" | grep -q "softcap.yaml: stage 'softcap' has no GLSL kernel: add codegen/templates/glsl/softcap.comp" && echo 1)" \
  "exit $rc: $(printf '%s' "$out" | head -2)"

# 2. An unknown shader name fails.
out=$("$LUA" codegen/gen_glsl.lua --shader matvec__q9_z__f32 --out "$TMP/x.comp" 2>&1); rc=$?
check unknown_shader_fails "$([ $rc != 0 ] && [ ! -e "$TMP/x.comp" ] && printf '%s' "$out" | grep -q "no variant has a shader named 'matvec__q9_z__f32'" && echo 1)" \
  "exit $rc: $out"

# 3. A new format from its contract alone: q8_0 copied as q8_0x with type id 99 (no stage lists it by name:
#    the matvec/MoE contracts take `qtypes: all`).
mkdir -p "$TMP/b" && cp -r contracts/* "$TMP/b/"
sed 's/^name: q8_0/name: q8_0x/; s/^ggml_type: 8/ggml_type: 99/; /^aliases:/d' contracts/quant/q8_0.yaml > "$TMP/b/quant/q8_0x.yaml"
ok=1
why=""
for s in matvec__q8_0x__f32 moe_gate_up_swiglu__q8_0x__f64 moe_down__q8_0x__f32; do
  if ! "$LUA" codegen/gen_glsl.lua --contracts "$TMP/b" --shader $s --out "$TMP/$s.comp" >"$TMP/log" 2>&1; then
    ok=0; why="$s: $(head -3 "$TMP/log")"; break
  fi
  if ! glslc --target-env=vulkan1.2 -O -o "$TMP/$s.spv" "$TMP/$s.comp" >"$TMP/log" 2>&1 ||
     ! spirv-val --target-env vulkan1.2 "$TMP/$s.spv" >"$TMP/log" 2>&1; then
    ok=0; why="$s does not compile: $(head -5 "$TMP/log")"; break
  fi
  grep -q "quant/q8_0x.yaml" "$TMP/$s.comp" || { ok=0; why="$s: no banner naming its quant contract"; break; }
done
check new_qtype_compiles "$ok" "$why"
"$LUA" codegen/gen_glsl.lua --contracts "$TMP/b" --table --out "$TMP/b.c" >/dev/null 2>&1
check new_qtype_in_table "$(grep -q '{"matvec__q8_0x__f64", "matvec/q8_0x/f64", QMOE_STAGE_MATVEC, 99, QMOE_ACC_F64' "$TMP/b.c" 2>/dev/null && echo 1)" \
  "generated/c/vk_variants.c for the fixture has no matvec/q8_0x/f64 row"

# 4. Deterministic, and the committed files are what it writes.
ok=1
why=""
for f in generated/glsl/*.comp; do
  s=$(basename "$f" .comp)
  "$LUA" codegen/gen_glsl.lua --shader "$s" --out "$TMP/1.comp" || { ok=0; why="$s: generator failed"; break; }
  cmp -s "$TMP/1.comp" "$f" || { ok=0; why="$f differs from what codegen/gen_glsl.lua writes (run ninja)"; break; }
  rm -f "$TMP/1.comp"
done
for s in matvec__q4_k__f64 router_topk__f32 attention__f64 argmax.final; do
  "$LUA" codegen/gen_glsl.lua --shader "$s" --out "$TMP/1.comp" && "$LUA" codegen/gen_glsl.lua --shader "$s" --out "$TMP/2.comp" &&
    cmp -s "$TMP/1.comp" "$TMP/2.comp" || { ok=0; why="$s: two runs differ"; break; }
done
"$LUA" codegen/gen_glsl.lua --table --out "$TMP/t.c" && cmp -s "$TMP/t.c" generated/c/vk_variants.c ||
  { ok=0; why="generated/c/vk_variants.c differs from what codegen/gen_glsl.lua writes (run ninja)"; }
check deterministic_and_current "$ok" "$why"
exit $fails
