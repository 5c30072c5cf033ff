#!/bin/sh
# fuzz.sh: builds every libFuzzer target tests/fuzz/fuzz_*.c with clang (-fsanitize=fuzzer,address,undefined)
# and runs each for SECONDS (default 60). A target says what it needs in its header comment:
#   fuzz-sources: FILES...   C files (globs) linked with it, e.g. src/lib/*.c build/gen/lua_modules.c
#   fuzz-libs: FLAGS...      extra link flags, e.g. -llua5.4 -lyaml
#   fuzz-seeds: PATHS...     files or directories whose regular files seed the corpus
#   fuzz-dict: FILE          libFuzzer dictionary (optional)
# Work files go to build/fuzz/<target>/ (corpus, crash-*, leak-*, timeout-* artifacts); the repository is not
# touched: keep a crasher you fixed by copying it into tests/fuzz/corpus_<name>/ (or a test corpus).
# Usage: scripts/fuzz.sh [-t SECONDS] [TARGET...]   (TARGET: fuzz_pv, ... ; default: all)
# Exit status: 0 when no target found a problem, 1 when one did, 2 on a usage or build error.
set -u
SECONDS_EACH=60
usage() { echo "usage: scripts/fuzz.sh [-t SECONDS] [TARGET...]" >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    -t) [ $# -ge 2 ] || usage; SECONDS_EACH=$2; shift 2 ;;
    -h|--help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "fuzz.sh: unknown option '$1'" >&2; usage ;;
    *) break ;;
  esac
done
case "$SECONDS_EACH" in ''|*[!0-9]*) echo "fuzz.sh: -t needs a whole number of seconds" >&2; usage ;; esac
cd "$(dirname "$0")/.." || exit 2
CC=${FUZZ_CC:-clang}
if ! command -v "$CC" >/dev/null 2>&1; then
  echo "fuzz.sh: $CC not found; install the Debian packages clang and libclang-rt-14-dev" >&2
  exit 2
fi
if [ ! -f build/gen/lua_modules.c ]; then
  echo "fuzz.sh: build/gen/lua_modules.c is missing; run ./configure first" >&2
  exit 2
fi
LUA_CFLAGS=$(pkg-config --cflags lua5.4 2>/dev/null || echo -I/usr/include/lua5.4)

# header_field FILE KEY: the value of "KEY: ..." in FILE's leading comment.
header_field() { sed -n "s/^[ /*]*$2: *//p" "$1" | head -1; }

if [ $# -eq 0 ]; then
  set -- $(ls tests/fuzz/fuzz_*.c 2>/dev/null | sed 's|.*/||; s|\.c$||')
fi
[ $# -gt 0 ] || { echo "fuzz.sh: no targets in tests/fuzz/" >&2; exit 2; }
found=0
for t in "$@"; do
  src=tests/fuzz/$t.c
  [ -f "$src" ] || { echo "fuzz.sh: no $src" >&2; exit 2; }
  out=build/fuzz/$t
  mkdir -p "$out/corpus"
  # shellcheck disable=SC2046,SC2086
  srcs=$(for g in $(header_field "$src" fuzz-sources); do ls $g 2>/dev/null; done)
  libs=$(header_field "$src" fuzz-libs)
  echo "== $t: building $out/$t"
  # shellcheck disable=SC2086
  if ! "$CC" -std=c11 -g -O1 -D_GNU_SOURCE -ffp-contract=off -fno-omit-frame-pointer \
       -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
       $(for d in runtime/*/; do printf -- "-I%s " "${d%/}"; done) -Isrc/lib -Igenerated/c -Ibuild/gen $LUA_CFLAGS \
       -o "$out/$t" "$src" $srcs $libs -lm -ldl -lpthread 2>"$out/build.log"; then
    cat "$out/build.log" >&2
    echo "fuzz.sh: building $t failed" >&2
    exit 2
  fi
  # Seeds: every regular file under the listed paths (small ones; libFuzzer caps inputs anyway).
  n=0
  for p in $(header_field "$src" fuzz-seeds); do
    [ -e "$p" ] || continue
    for f in $(find "$p" -type f -size -1024k 2>/dev/null); do
      cp "$f" "$out/corpus/seed_$(echo "$f" | tr '/' '_')" && n=$((n + 1))
    done
  done
  dict=$(header_field "$src" fuzz-dict)
  dictarg=""
  [ -n "$dict" ] && [ -f "$dict" ] && dictarg="-dict=$dict"
  echo "== $t: fuzzing for ${SECONDS_EACH}s ($n seed file(s))"
  # shellcheck disable=SC2086
  "$out/$t" -max_total_time="$SECONDS_EACH" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
    -artifact_prefix="$out/" -print_final_stats=1 $dictarg "$out/corpus" >"$out/log" 2>&1
  rc=$?
  tail -5 "$out/log"
  if [ $rc -ne 0 ]; then
    echo "fuzz.sh: $t found a problem (exit $rc); see $out/log and the artifact it names:" >&2
    ls "$out"/crash-* "$out"/leak-* "$out"/timeout-* "$out"/oom-* 2>/dev/null >&2
    found=1
  else
    echo "== $t: no problem found"
  fi
done
exit $found
