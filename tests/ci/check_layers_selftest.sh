#!/bin/sh
# check_layers_selftest.sh: check_layers.lua can fail — a tree with a planted upward include, a planted
# include cycle and a planted require from the tools into codegen must each be reported.
# qmoe-test: normal-only
set -u
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
mkdir -p "$T/src/lib/lua" "$T/runtime/stages" "$T/runtime/model" "$T/codegen/lib"
cd "$T" && git init -q . || exit 1
printf '#include "backend.h"\n' >src/lib/up.c              # tools -> libqmoe
printf '/* ok */\n' >runtime/stages/backend.h
printf '#include "b.h"\n' >runtime/model/a.h                # a.h -> b.h -> a.h
printf '#include "a.h"\n' >runtime/model/b.h
printf 'local u = require("util")\n' >src/lib/lua/expr.lua  # tools -> codegen
printf 'return {}\n' >codegen/lib/util.lua
cd - >/dev/null || exit 1
out=$(lua5.4 tests/ci/check_layers.lua "$T" 2>&1)
check() { # name pattern
  if printf '%s\n' "$out" | grep -q -- "$2"; then echo "ok selftest/$1"; else echo "not ok selftest/$1: not reported; got: $out"; fi
}
check upward-include "src/lib/up.c:1: #include \"backend.h\" reaches up"
check upward-require "src/lib/lua/expr.lua:1: require(\"util\") reaches up"
check cycle "runtime/model/a -> runtime/model/b"
if lua5.4 tests/ci/check_layers.lua "$T" >/dev/null 2>&1; then echo "not ok selftest/exit-status: 0 on a bad tree"; else echo "ok selftest/exit-status"; fi
