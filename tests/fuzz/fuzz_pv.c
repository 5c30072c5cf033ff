/* fuzz_pv.c: libFuzzer target for the YAML loader and the contract validator: one in-memory file, checked
 * as a quant, a stage and a model contract in turn (expressions too, through the embedded expr module).
 * Build and run with scripts/fuzz.sh; the lines below tell it what to link and where seeds are.
 * fuzz-sources: src/lib/*.c build/gen/lua_modules.c
 * fuzz-libs: -llua5.4 -lyaml
 * fuzz-seeds: contracts tests/pv/valid tests/pv/invalid tests/fuzz/corpus_pv
 * fuzz-dict: tests/fuzz/pv.dict */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include "pv.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static FILE *sink;
  if (!sink) sink = fopen("/dev/null", "w");
  static const struct { pv_kind kind; const char *name; } kinds[] = {
    { PV_KIND_QUANT, "fuzz/quant/input.yaml" },
    { PV_KIND_STAGE, "fuzz/stages/input.yaml" },
    { PV_KIND_MODEL, "fuzz/models/input.yaml" },
  };
  for (size_t k = 0; k < sizeof kinds / sizeof kinds[0]; k++) {
    pv_result res = { 0 };
    int rc = pv_validate_buffer(kinds[k].name, kinds[k].kind, (const char *)data, size, &res);
    if (rc < 0 || rc > 2) __builtin_trap();
    if ((rc == 0) != (res.diag.errors == 0)) __builtin_trap(); /* exit status and report agree */
    if (sink) {
      pv_print_text(&res, sink);
      pv_print_json(&res, sink);
    }
    pv_result_free(&res);
  }
  return 0;
}
