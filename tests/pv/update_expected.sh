#!/bin/sh
# update_expected.sh: after changing a pv message on purpose, rewrites the "# expect:" line of every file
# in tests/pv/invalid/{quant,stages,models} with the first error line pv now prints, and names each file it
# changed. Review every change (git diff tests/pv) before committing: a changed line may be a regression.
# (.expected sidecars are few; update them by hand.) Usage: sh tests/pv/update_expected.sh [BIN_DIR]
PV="${1:-build}/pv"
for f in tests/pv/invalid/quant/*.yaml tests/pv/invalid/stages/*.yaml tests/pv/invalid/models/*.yaml; do
  head -1 "$f" | grep -q '^# expect: ' || continue
  case "$f" in */stages/*) set -- --refs tests/pv/valid/base ;; *) set -- --no-refs ;; esac
  line=$("$PV" validate "$@" "$f" | grep -m1 ': error\[')
  old=$(head -1 "$f")
  if [ "$old" != "# expect: $line" ]; then
    { echo "# expect: $line"; tail -n +2 "$f"; } >"$f.tmp" && mv "$f.tmp" "$f"
    echo "changed $f: $line"
  fi
done
