#!/bin/sh
# check_no_vulkan.sh: the Vulkan binaries on a machine without a Vulkan loader, and with a loader but no
# driver: every case skips with a plain message (or, with QMOE_TEST_REQUIRE_BACKEND=1, fails saying why).
# Run from the repository root with QMOE_BIN=build (or build/san).
BIN=${QMOE_BIN:-build}
PARITY=$BIN/tests/test_parity_vulkan
RUNTIME=$BIN/tests/test_vk_runtime
fails=0

check() { # NAME COND MESSAGE
  if [ "$2" = 1 ]; then echo "ok $1"; else echo "not ok $1: $3"; fails=1; fi
}

for f in "$PARITY" "$RUNTIME"; do
  if [ ! -x "$f" ]; then echo "not ok binaries: $f is missing (run ninja)"; exit 1; fi
done

# 1. No loader: QMOE_VK_LOADER names a library that does not exist (the same code path as a missing
#    libvulkan.so.1).
out=$(QMOE_VK_LOADER=libqmoe-absent-vulkan.so.1 "$PARITY" 2>&1); rc=$?
n_skip=$(printf '%s\n' "$out" | grep -c '^skip .*no Vulkan loader found (libqmoe-absent-vulkan.so.1)')
n_other=$(printf '%s\n' "$out" | grep -c '^ok \|^not ok ')
check no_loader_parity_skips "$([ $rc = 0 ] && [ "$n_skip" -gt 10 ] && [ "$n_other" = 0 ] && echo 1)" \
  "exit $rc, $n_skip skips naming the loader, $n_other other results: $(printf '%s\n' "$out" | head -3)"

out=$(QMOE_TEST_REQUIRE_BACKEND=1 QMOE_VK_LOADER=libqmoe-absent-vulkan.so.1 "$PARITY" 2>&1); rc=$?
check no_loader_required_fails "$([ $rc != 0 ] && printf '%s\n' "$out" | grep -q '^not ok .*no Vulkan loader found' && echo 1)" \
  "exit $rc: $(printf '%s\n' "$out" | head -3)"

# 2. A loader but no driver: the loader finds no ICD.
out=$(VK_ICD_FILENAMES=/nonexistent/qmoe_icd.json VK_DRIVER_FILES=/nonexistent/qmoe_icd.json QMOE_VK_VALIDATION=0 "$RUNTIME" 2>&1); rc=$?
n_skip=$(printf '%s\n' "$out" | grep -c '^skip .*no Vulkan device found')
n_bad=$(printf '%s\n' "$out" | grep -c '^not ok ')
check no_driver_skips "$([ $rc = 0 ] && [ "$n_skip" -gt 3 ] && [ "$n_bad" = 0 ] && echo 1)" \
  "exit $rc, $n_skip skips saying 'no Vulkan device found', $n_bad failures: $(printf '%s\n' "$out" | grep -v '^ok' | head -3)"

exit $fails
