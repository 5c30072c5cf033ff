/* fuzz_json.c: libFuzzer target for the strict JSON parser `qmoe convert` reads config.json, tokenizer.json and
 * safetensors headers with: a refusal must be QMOE_EFORMAT naming "fuzz:LINE:COL"; an accepted document must be a
 * well-formed tree (valid UTF-8 strings of the stated length, keys on object members only). */
// fuzz-sources: runtime/hf/json.c runtime/core/error.c
// fuzz-libs: -lm
// fuzz-seeds: tests/fuzz/corpus_json tests/oracle/model
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include "qmoe.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check(int ok) {
  if (!ok) __builtin_trap();
}

static void walk(const qmoe_json *v, int in_object, int depth) {
  check(depth <= 513);
  check(v->line >= 1 && v->col >= 1);
  check(in_object ? v->key != NULL && v->key[v->key_len] == 0 : v->key == NULL);
  if (v->type == QMOE_JSON_STRING) check(v->string && v->string[v->len] == 0);
  else check(v->string == NULL);
  if (v->type == QMOE_JSON_ARRAY || v->type == QMOE_JSON_OBJECT) {
    for (size_t i = 0; i < v->count; i++) walk(&v->items[i], v->type == QMOE_JSON_OBJECT, depth + 1);
    if (v->type == QMOE_JSON_OBJECT && v->count) check(qmoe_json_get(v, v->items[0].key) != NULL || memchr(v->items[0].key, 0, v->items[0].key_len));
  } else {
    check(v->count == 0);
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  qmoe_json *root = NULL;
  int rc = qmoe_json_parse(data, size, "fuzz", &root);
  if (rc) {
    check(rc == QMOE_EFORMAT && root == NULL);
    check(strncmp(qmoe_last_error(), "fuzz:", 5) == 0);
    return 0;
  }
  walk(root, 0, 0);
  qmoe_json_free(root);
  return 0;
}
