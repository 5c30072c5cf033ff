#!/bin/sh
# check_generated.sh: generated/ must be exactly what the generators produce from the committed contracts.
# ninja has already regenerated it in place (the test target depends on the whole build), so any difference
# from the commit — a changed, deleted or new file — means a contract or generator changed without its output.
# qmoe-test: normal-only
cd "$(dirname "$0")/../.." || exit 2
if ! git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  echo "skip generated-up-to-date: not a git checkout, nothing to compare with"
  exit 0
fi
drift=$(git status --porcelain --untracked-files=all -- generated/)
if [ -n "$drift" ]; then
  echo "not ok generated-up-to-date: generated/ differs from the commit; run ninja and commit generated/:"
  echo "$drift" | head -40 | sed 's/^/#   /'
  git diff --stat -- generated/ | tail -5 | sed 's/^/#   /'
  exit 1
fi
n=$(git ls-files generated/ | wc -l)
echo "ok generated-up-to-date ($n committed files match their generators)"
