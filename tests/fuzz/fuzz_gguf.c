/* fuzz_gguf.c: libFuzzer target for the GGUF reader: one in-memory file is opened; a refusal must be
 * QMOE_EFORMAT with a message naming the file and a byte offset; an accepted file must keep every promise of
 * qmoe.h (tensors inside the file, aligned, sized consistently) while everything in it is read: every key
 * through every getter, every array element (nested too), the first and last row of every tensor decoded.
 * Build and run with scripts/fuzz.sh; the lines below tell it what to link and where seeds are. Crashers it
 * finds go to tests/gguf/hostile as crash-*.gguf with their expected message in EXPECT.fuzz. */
// fuzz-sources: runtime/gguf/*.c runtime/core/error.c runtime/quant/quant.c generated/c/qtypes.c generated/c/quant_*.c
// fuzz-libs: -lm -lpthread
// fuzz-seeds: tests/fuzz/corpus_gguf tests/gguf/hostile tests/data
// fuzz-dict: tests/fuzz/gguf.dict
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "qmoe.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check(int ok) {
  if (!ok) __builtin_trap();
}

static void walk_value(const qmoe_gguf_value *v, int depth, uint64_t *sink) {
  check(depth < 16);
  if (v->type == QMOE_GGUF_ARRAY) {
    qmoe_gguf_iter it;
    qmoe_gguf_value e, pre;
    uint64_t n = 0;
    qmoe_gguf_iter_init(&it, v);
    while (qmoe_gguf_iter_next(&it, &e)) {
      check(e.type == v->elem_type);
      walk_value(&e, depth + 1, sink);
      n++;
    }
    check(n == v->count);
    check(it.pos == v->size); /* the elements fill exactly the bytes the reader measured */
    if (v->count) {
      check(qmoe_gguf_array_get(v, v->count - 1, &e) == 0);
      check(qmoe_gguf_array_prefix(v, v->count / 2, &pre) == 0 && pre.size <= v->size);
    }
    return;
  }
  if (v->size) *sink += ((const uint8_t *)v->data)[0] + ((const uint8_t *)v->data)[v->size - 1];
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  /* An exact-size copy, so the sanitizer sees any read past the end. */
  uint8_t *copy = malloc(size ? size : 1);
  if (!copy) return 0;
  memcpy(copy, data, size);
  qmoe_gguf *f = NULL;
  int rc = qmoe_gguf_open_memory(copy, size, "fuzz.gguf", &f);
  if (rc != 0) {
    check(rc == QMOE_EFORMAT && f == NULL);
    check(strncmp(qmoe_last_error(), "fuzz.gguf: offset ", 18) == 0);
    free(copy);
    return 0;
  }
  uint64_t sink = 0, a = qmoe_gguf_alignment(f);
  check(a && !(a & (a - 1)));
  for (int64_t i = 0; i < qmoe_gguf_kv_count(f); i++) {
    const char *key = qmoe_gguf_kv_key(f, i);
    const qmoe_gguf_value *v = qmoe_gguf_kv_value(f, i);
    check(qmoe_gguf_find_key(f, key) == i);
    walk_value(v, 0, &sink);
    uint64_t u;
    int64_t s;
    uint32_t u32;
    float fl;
    double d;
    int b;
    const char *str;
    uint64_t len;
    qmoe_gguf_value arr;
    sink += (uint64_t)qmoe_gguf_get_u64(f, key, &u) + (uint64_t)qmoe_gguf_get_i64(f, key, &s);
    sink += (uint64_t)qmoe_gguf_get_u32(f, key, &u32) + (uint64_t)qmoe_gguf_get_f32(f, key, &fl);
    sink += (uint64_t)qmoe_gguf_get_f64(f, key, &d) + (uint64_t)qmoe_gguf_get_bool(f, key, &b);
    check((qmoe_gguf_get_str(f, key, &str, &len) == 0) == (v->type == QMOE_GGUF_STRING));
    check((qmoe_gguf_get_array(f, key, -1, &arr) == 0) == (v->type == QMOE_GGUF_ARRAY));
  }
  for (int64_t i = 0; i < qmoe_gguf_tensor_count(f); i++) {
    const qmoe_gguf_tensor *t = qmoe_gguf_tensor_at(f, i);
    check(qmoe_gguf_find_tensor(f, t->name) == t);
    check(t->n_dims >= 1 && t->n_dims <= 4 && t->nbytes == t->row_bytes * (uint64_t)t->n_rows);
    check(t->file_offset % a == 0 && t->file_offset >= qmoe_gguf_data_offset(f));
    check(t->file_offset + t->nbytes <= size && (const uint8_t *)t->data == copy + t->file_offset);
    sink += ((const uint8_t *)t->data)[0] + ((const uint8_t *)t->data)[t->nbytes - 1];
    const qmoe_qtype_info *q = qmoe_qtype_by_id(t->type);
    if (q && q->dequant_row && t->ne[0] <= (1 << 16)) {
      float *row = malloc(sizeof(float) * (size_t)t->ne[0]);
      void *src = malloc((size_t)t->row_bytes);
      if (row && src) {
        memcpy(src, t->data, (size_t)t->row_bytes);
        check(q->dequant_row(src, row, t->ne[0]) == 0);
        memcpy(src, (const uint8_t *)t->data + (uint64_t)(t->n_rows - 1) * t->row_bytes, (size_t)t->row_bytes);
        check(q->dequant_row(src, row, t->ne[0]) == 0);
      }
      free(row);
      free(src);
    }
  }
  qmoe_gguf_close(f);
  free(copy);
  return sink == 0x5eed ? 0 : 0;
}
