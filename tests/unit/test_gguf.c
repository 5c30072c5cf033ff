/* test_gguf.c: the GGUF reader and writer: round trips of every value type and of random tensor tables,
 * typed getters, streaming, the writer's refusals, every truncation and random corruption of a valid file
 * (which must fail cleanly or read consistently), and the real-data fixture. */
#include <stdint.h>
#include <unistd.h>
#include "../harness.h"
#include "qmoe.h"
#include "qtypes.h"

static char tmp_path[64];

static const char *temp_file(void) {
  snprintf(tmp_path, sizeof tmp_path, "/tmp/qmoe-test-gguf-XXXXXX");
  int fd = mkstemp(tmp_path);
  if (fd >= 0) close(fd);
  return tmp_path;
}

static unsigned char *read_all(const char *path, size_t *size) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  unsigned char *p = malloc((size_t)n + 1);
  if (fread(p, 1, (size_t)n, f) != (size_t)n) n = 0;
  fclose(f);
  *size = (size_t)n;
  return p;
}

/* An array of two arrays of u16, [[1, 2, 3], [40000]], encoded as in a file (the writer has no nested setter:
 * nested values are copied from files, so here one is made by hand). */
static const unsigned char nested_bytes[] = {
  2, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 1, 0, 2, 0, 3, 0, /* u16 x3 */
  2, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0x40, 0x9c,       /* u16 x1 = 40000 */
};

static int write_all_types(const char *path) {
  qmoe_gguf_writer *w = qmoe_gguf_writer_new();
  int rc = 0;
  rc |= qmoe_gguf_writer_set_str(w, "general.architecture", "qwen3moe", 8);
  rc |= qmoe_gguf_writer_set_u8(w, "t.u8", 250);
  rc |= qmoe_gguf_writer_set_i8(w, "t.i8", -120);
  rc |= qmoe_gguf_writer_set_u16(w, "t.u16", 65000);
  rc |= qmoe_gguf_writer_set_i16(w, "t.i16", -32000);
  rc |= qmoe_gguf_writer_set_u32(w, "t.u32", 4000000000u);
  rc |= qmoe_gguf_writer_set_i32(w, "t.i32", -2000000000);
  rc |= qmoe_gguf_writer_set_f32(w, "t.f32", 1e-6f);
  rc |= qmoe_gguf_writer_set_bool(w, "t.bool", 1);
  rc |= qmoe_gguf_writer_set_u64(w, "t.u64", UINT64_MAX);
  rc |= qmoe_gguf_writer_set_i64(w, "t.i64", INT64_MIN);
  rc |= qmoe_gguf_writer_set_f64(w, "t.f64", 0.1);
  rc |= qmoe_gguf_writer_set_str(w, "t.str", "a\0b", 3); /* strings may hold any bytes */
  const int32_t i32s[] = { 1, -2, 3, INT32_MIN };
  rc |= qmoe_gguf_writer_set_array(w, "t.arr_i32", QMOE_GGUF_I32, i32s, 4);
  const float f32s[] = { 0.5f, -0.25f };
  rc |= qmoe_gguf_writer_set_array(w, "t.arr_f32", QMOE_GGUF_F32, f32s, 2);
  const uint8_t bools[] = { 1, 0, 1 };
  rc |= qmoe_gguf_writer_set_array(w, "t.arr_bool", QMOE_GGUF_BOOL, bools, 3);
  const char *strs[] = { "x", "", "hello" };
  rc |= qmoe_gguf_writer_set_str_array(w, "t.arr_str", strs, 3);
  rc |= qmoe_gguf_writer_set_array(w, "t.empty", QMOE_GGUF_U8, NULL, 0);
  qmoe_gguf_value nested = { QMOE_GGUF_ARRAY, QMOE_GGUF_ARRAY, 2, nested_bytes, sizeof nested_bytes, 0 };
  rc |= qmoe_gguf_writer_set_value(w, "t.nested", &nested);
  rc |= qmoe_gguf_writer_set_u32(w, "t.replaced", 1);
  rc |= qmoe_gguf_writer_set_u32(w, "t.replaced", 2); /* replaces, keeps the first position */
  float data[64];
  for (int i = 0; i < 64; i++) data[i] = (float)i;
  int64_t ne[2] = { 32, 2 };
  rc |= qmoe_gguf_writer_add_tensor(w, "m", 0, 2, ne, data);
  if (!rc) rc = qmoe_gguf_writer_write(w, path);
  qmoe_gguf_writer_free(w);
  return rc;
}

static void test_all_value_types(void) {
  const char *path = temp_file();
  REQUIRE(write_all_types(path) == 0, "write: %s", qmoe_last_error());
  qmoe_gguf *f;
  REQUIRE(qmoe_gguf_open(path, &f) == 0, "open: %s", qmoe_last_error());
  CHECK(qmoe_gguf_version(f) == 3, "version %u", qmoe_gguf_version(f));
  CHECK(qmoe_gguf_kv_count(f) == 20, "%lld keys", (long long)qmoe_gguf_kv_count(f));
  CHECK(!strcmp(qmoe_gguf_kv_key(f, 0), "general.architecture"), "first key %s", qmoe_gguf_kv_key(f, 0));
  CHECK(!strcmp(qmoe_gguf_kv_key(f, 19), "t.replaced"), "last key %s", qmoe_gguf_kv_key(f, 19));
  uint64_t u;
  int64_t i;
  uint32_t u32;
  float fl;
  double d;
  int b;
  CHECK(qmoe_gguf_get_u64(f, "t.u8", &u) == 0 && u == 250, "u8");
  CHECK(qmoe_gguf_get_i64(f, "t.i8", &i) == 0 && i == -120, "i8");
  CHECK(qmoe_gguf_get_u32(f, "t.u16", &u32) == 0 && u32 == 65000, "u16");
  CHECK(qmoe_gguf_get_i64(f, "t.i16", &i) == 0 && i == -32000, "i16");
  CHECK(qmoe_gguf_get_u32(f, "t.u32", &u32) == 0 && u32 == 4000000000u, "u32");
  CHECK(qmoe_gguf_get_i64(f, "t.i32", &i) == 0 && i == -2000000000, "i32");
  CHECK(qmoe_gguf_get_f32(f, "t.f32", &fl) == 0 && fl == 1e-6f, "f32");
  CHECK(qmoe_gguf_get_f64(f, "t.f32", &d) == 0 && d == (double)1e-6f, "f32 as f64");
  CHECK(qmoe_gguf_get_bool(f, "t.bool", &b) == 0 && b == 1, "bool");
  CHECK(qmoe_gguf_get_u64(f, "t.u64", &u) == 0 && u == UINT64_MAX, "u64");
  CHECK(qmoe_gguf_get_i64(f, "t.i64", &i) == 0 && i == INT64_MIN, "i64");
  CHECK(qmoe_gguf_get_f64(f, "t.f64", &d) == 0 && d == 0.1, "f64");
  CHECK(qmoe_gguf_get_u32(f, "t.replaced", &u32) == 0 && u32 == 2, "replaced value %u", u32);
  const char *s;
  uint64_t len;
  CHECK(qmoe_gguf_get_str(f, "t.str", &s, &len) == 0 && len == 3 && !memcmp(s, "a\0b", 3), "string with a NUL");

  qmoe_gguf_value arr, e;
  REQUIRE(qmoe_gguf_get_array(f, "t.arr_i32", QMOE_GGUF_I32, &arr) == 0, "arr_i32: %s", qmoe_last_error());
  CHECK(arr.count == 4, "arr_i32 count");
  CHECK(qmoe_gguf_array_get(&arr, 3, &e) == 0 && qmoe_gguf_value_i64(&e, &i) == 0 && i == INT32_MIN, "arr_i32[3]");
  CHECK(qmoe_gguf_array_get(&arr, 4, &e) == QMOE_EINVAL, "index past the end accepted");
  REQUIRE(qmoe_gguf_get_array(f, "t.arr_f32", QMOE_GGUF_F32, &arr) == 0, "arr_f32");
  CHECK(qmoe_gguf_array_get(&arr, 1, &e) == 0 && qmoe_gguf_value_f64(&e, &d) == 0 && d == -0.25, "arr_f32[1]");
  REQUIRE(qmoe_gguf_get_array(f, "t.arr_bool", QMOE_GGUF_BOOL, &arr) == 0, "arr_bool");
  CHECK(arr.count == 3 && ((const uint8_t *)arr.data)[2] == 1 && ((const uint8_t *)arr.data)[1] == 0, "arr_bool values");
  REQUIRE(qmoe_gguf_get_array(f, "t.arr_str", QMOE_GGUF_STRING, &arr) == 0, "arr_str");
  qmoe_gguf_iter it;
  qmoe_gguf_iter_init(&it, &arr);
  const char *want[] = { "x", "", "hello" };
  int n = 0;
  while (qmoe_gguf_iter_next(&it, &e)) {
    CHECK(e.type == QMOE_GGUF_STRING && e.count == strlen(want[n]) && !memcmp(e.data, want[n], e.count), "string %d", n);
    n++;
  }
  CHECK(n == 3, "%d strings", n);
  CHECK(qmoe_gguf_array_get(&arr, 2, &e) == 0 && e.count == 5, "arr_str[2] by index");
  qmoe_gguf_value pre;
  CHECK(qmoe_gguf_array_prefix(&arr, 2, &pre) == 0 && pre.count == 2 && pre.size == 8 + 1 + 8, "prefix of 2 strings");
  CHECK(qmoe_gguf_array_prefix(&arr, 4, &pre) == QMOE_EINVAL, "prefix longer than the array accepted");
  REQUIRE(qmoe_gguf_get_array(f, "t.empty", -1, &arr) == 0, "empty array");
  CHECK(arr.count == 0 && arr.elem_type == QMOE_GGUF_U8, "empty array count/type");
  REQUIRE(qmoe_gguf_get_array(f, "t.nested", QMOE_GGUF_ARRAY, &arr) == 0, "nested: %s", qmoe_last_error());
  CHECK(arr.count == 2 && arr.size == sizeof nested_bytes, "nested count %llu size %llu", (unsigned long long)arr.count,
        (unsigned long long)arr.size);
  qmoe_gguf_iter_init(&it, &arr);
  REQUIRE(qmoe_gguf_iter_next(&it, &e) && e.type == QMOE_GGUF_ARRAY && e.elem_type == QMOE_GGUF_U16 && e.count == 3, "nested[0]");
  qmoe_gguf_value inner;
  CHECK(qmoe_gguf_array_get(&e, 2, &inner) == 0 && qmoe_gguf_value_u64(&inner, &u) == 0 && u == 3, "nested[0][2]");
  REQUIRE(qmoe_gguf_iter_next(&it, &e) && e.count == 1, "nested[1]");
  CHECK(qmoe_gguf_array_get(&e, 0, &inner) == 0 && qmoe_gguf_value_u64(&inner, &u) == 0 && u == 40000, "nested[1][0]");
  CHECK(!qmoe_gguf_iter_next(&it, &e), "nested has only 2 elements");

  const qmoe_gguf_tensor *t = qmoe_gguf_find_tensor(f, "m");
  REQUIRE(t, "tensor m missing");
  CHECK(t->n_dims == 2 && t->ne[0] == 32 && t->ne[1] == 2 && t->ne[2] == 1 && t->n_rows == 2 && t->nbytes == 256 &&
        t->row_bytes == 128 && !strcmp(t->type_name, "F32"), "tensor m table entry");
  float back[64];
  memcpy(back, t->data, sizeof back);
  CHECK(back[63] == 63.0f && back[1] == 1.0f, "tensor m data");
  CHECK(t->file_offset % 32 == 0 && t->file_offset == qmoe_gguf_data_offset(f), "tensor m offset");
  CHECK(qmoe_gguf_find_tensor(f, "n") == NULL, "find of an absent tensor");
  qmoe_gguf_close(f);
  unlink(path);
}

static void test_getter_errors(void) {
  const char *path = temp_file();
  REQUIRE(write_all_types(path) == 0, "write: %s", qmoe_last_error());
  qmoe_gguf *f;
  REQUIRE(qmoe_gguf_open(path, &f) == 0, "open: %s", qmoe_last_error());
  uint32_t u32;
  uint64_t u;
  int64_t i;
  float fl;
  int b;
  const char *s;
  uint64_t len;
  qmoe_gguf_value arr;
  CHECK(qmoe_gguf_get_u32(f, "no.such.key", &u32) == QMOE_EFORMAT, "missing key");
  CHECK(strstr(qmoe_last_error(), "key 'no.such.key' is missing") && strstr(qmoe_last_error(), path), "%s", qmoe_last_error());
  CHECK(qmoe_gguf_find_key(f, "no.such.key") == -1, "find of a missing key");
  CHECK(qmoe_gguf_get_u32(f, "general.architecture", &u32) == QMOE_EFORMAT, "string as u32");
  CHECK(strstr(qmoe_last_error(), "key 'general.architecture' is string, expected an integer") &&
        strstr(qmoe_last_error(), "offset"), "%s", qmoe_last_error());
  CHECK(qmoe_gguf_get_u32(f, "t.u64", &u32) == QMOE_EFORMAT && strstr(qmoe_last_error(), "too large for a u32"), "%s",
        qmoe_last_error());
  CHECK(qmoe_gguf_get_i64(f, "t.u64", &i) == QMOE_EFORMAT, "u64 max as i64");
  CHECK(qmoe_gguf_get_u64(f, "t.i8", &u) == QMOE_EFORMAT && strstr(qmoe_last_error(), "non-negative"), "%s", qmoe_last_error());
  CHECK(qmoe_gguf_get_f32(f, "t.f64", &fl) == QMOE_EFORMAT && strstr(qmoe_last_error(), "expected f32"), "f64 as f32");
  CHECK(qmoe_gguf_get_bool(f, "t.u8", &b) == QMOE_EFORMAT, "u8 as bool");
  CHECK(qmoe_gguf_get_str(f, "t.u8", &s, &len) == QMOE_EFORMAT, "u8 as string");
  CHECK(qmoe_gguf_get_array(f, "t.arr_i32", QMOE_GGUF_STRING, &arr) == QMOE_EFORMAT &&
        strstr(qmoe_last_error(), "array of i32, expected an array of string"), "%s", qmoe_last_error());
  CHECK(qmoe_gguf_get_array(f, "t.u8", -1, &arr) == QMOE_EFORMAT, "u8 as array");
  qmoe_gguf_close(f);
  unlink(path);
}

/* Random tensor tables: every entry, byte and padding reads back as written, at any alignment. */
static void test_random_tensor_tables(void) {
  t_seed();
  /* the last: a GGUF type no contract lists (generated/c/qtypes.c), still sized */
  const int types[] = { 0, 1, 8, 12, 14, 30, qmoe_ggml_other_types[0].id };
  for (int round = 0; round < 40; round++) {
    qmoe_gguf_writer *w = qmoe_gguf_writer_new();
    uint32_t align = 1u << (t_rand_u64() % 9); /* 1 .. 256 */
    if (align != 32 || t_rand_u64() % 2) REQUIRE(qmoe_gguf_writer_set_u32(w, "general.alignment", align) == 0, "alignment");
    int nt = (int)(t_rand_u64() % 12);
    unsigned char *bufs[12];
    char names[12][32];
    int64_t ne[12][4];
    int nd[12], ty[12];
    for (int k = 0; k < nt; k++) {
      int64_t be, bb;
      ty[k] = types[t_rand_u64() % (sizeof types / sizeof types[0])];
      qmoe_gguf_type_size(ty[k], NULL, &be, &bb);
      nd[k] = 1 + (int)(t_rand_u64() % 4);
      ne[k][0] = be * (1 + (int64_t)(t_rand_u64() % 3));
      for (int d = 1; d < 4; d++) ne[k][d] = d < nd[k] ? 1 + (int64_t)(t_rand_u64() % 3) : 1;
      int64_t bytes = ne[k][0] / be * bb * ne[k][1] * ne[k][2] * ne[k][3];
      bufs[k] = malloc((size_t)bytes);
      for (int64_t j = 0; j < bytes; j++) bufs[k][j] = (unsigned char)t_rand_u64();
      snprintf(names[k], sizeof names[k], "blk.%d.t%llu", k, (unsigned long long)(t_rand_u64() % 1000));
      REQUIRE(qmoe_gguf_writer_add_tensor(w, names[k], ty[k], nd[k], ne[k], bufs[k]) == 0, "add: %s", qmoe_last_error());
    }
    const char *path = temp_file();
    REQUIRE(qmoe_gguf_writer_write(w, path) == 0, "write: %s", qmoe_last_error());
    qmoe_gguf_writer_free(w);
    qmoe_gguf *f;
    REQUIRE(qmoe_gguf_open(path, &f) == 0, "round %d open: %s", round, qmoe_last_error());
    size_t size;
    unsigned char *file = read_all(path, &size);
    REQUIRE(file, "read back");
    CHECK(qmoe_gguf_alignment(f) == align, "alignment %llu, want %u", (unsigned long long)qmoe_gguf_alignment(f), align);
    CHECK(qmoe_gguf_tensor_count(f) == nt, "tensor count");
    uint64_t covered_end = qmoe_gguf_data_offset(f);
    for (int k = 0; k < nt && k < qmoe_gguf_tensor_count(f); k++) {
      const qmoe_gguf_tensor *t = qmoe_gguf_tensor_at(f, k);
      CHECK(!strcmp(t->name, names[k]) && t->type == ty[k] && t->n_dims == nd[k], "tensor %d entry", k);
      CHECK(qmoe_gguf_find_tensor(f, names[k]) == t, "find %s", names[k]);
      for (int d = 0; d < 4; d++) CHECK(t->ne[d] == ne[k][d], "tensor %d ne[%d]", k, d);
      CHECK(t->file_offset % align == 0, "tensor %d at %llu not aligned to %u", k, (unsigned long long)t->file_offset, align);
      CHECK(!memcmp(t->data, bufs[k], (size_t)t->nbytes), "tensor %d bytes", k);
      for (uint64_t p = covered_end; p < t->file_offset; p++) CHECK(file[p] == 0, "padding byte %llu not zero", (unsigned long long)p);
      covered_end = t->file_offset + t->nbytes;
    }
    for (uint64_t p = covered_end; p < size; p++) CHECK(file[p] == 0, "trailing padding byte not zero");
    CHECK(size % align == 0 || nt == 0, "file size %zu not a multiple of %u", size, align);
    qmoe_gguf_close(f);
    free(file);
    for (int k = 0; k < nt; k++) free(bufs[k]);
    unlink(path);
  }
}

static void test_streaming(void) {
  qmoe_gguf_writer *w = qmoe_gguf_writer_new();
  unsigned char a[34 * 4], b[144 * 2];
  for (size_t i = 0; i < sizeof a; i++) a[i] = (unsigned char)(i * 7);
  for (size_t i = 0; i < sizeof b; i++) b[i] = (unsigned char)(i * 13 + 1);
  int64_t ne_a[2] = { 64, 2 }, ne_b[1] = { 512 };
  REQUIRE(qmoe_gguf_writer_add_tensor(w, "a", 8, 2, ne_a, NULL) == 0, "add a");
  REQUIRE(qmoe_gguf_writer_add_tensor(w, "b", 12, 1, ne_b, NULL) == 0, "add b");
  const char *path = temp_file();
  unlink(path);
  CHECK(qmoe_gguf_writer_write(w, path) == QMOE_EINVAL && strstr(qmoe_last_error(), "without data"), "write without data");
  REQUIRE(qmoe_gguf_writer_begin(w, path) == 0, "begin: %s", qmoe_last_error());
  CHECK(access(path, F_OK) != 0, "the output appeared before finish");
  /* Chunks that straddle the tensor boundary. */
  REQUIRE(qmoe_gguf_writer_append(w, a, 5) == 0, "append 1");
  unsigned char mid[sizeof a - 5 + 100];
  memcpy(mid, a + 5, sizeof a - 5);
  memcpy(mid + sizeof a - 5, b, 100);
  REQUIRE(qmoe_gguf_writer_append(w, mid, sizeof mid) == 0, "append 2");
  REQUIRE(qmoe_gguf_writer_append(w, b + 100, sizeof b - 100) == 0, "append 3");
  CHECK(qmoe_gguf_writer_add_tensor(w, "c", 0, 1, ne_b, NULL) == QMOE_EINVAL, "add after begin accepted");
  REQUIRE(qmoe_gguf_writer_finish(w) == 0, "finish: %s", qmoe_last_error());
  qmoe_gguf_writer_free(w);
  qmoe_gguf *f;
  REQUIRE(qmoe_gguf_open(path, &f) == 0, "open: %s", qmoe_last_error());
  const qmoe_gguf_tensor *ta = qmoe_gguf_find_tensor(f, "a"), *tb = qmoe_gguf_find_tensor(f, "b");
  REQUIRE(ta && tb, "tensors missing");
  CHECK(ta->nbytes == sizeof a && !memcmp(ta->data, a, sizeof a), "a bytes");
  CHECK(tb->nbytes == sizeof b && !memcmp(tb->data, b, sizeof b), "b bytes");
  qmoe_gguf_close(f);
  unlink(path);

  /* Too few bytes: finish fails and leaves no file; too many: append fails. */
  w = qmoe_gguf_writer_new();
  REQUIRE(qmoe_gguf_writer_add_tensor(w, "a", 8, 2, ne_a, NULL) == 0, "add a");
  REQUIRE(qmoe_gguf_writer_begin(w, path) == 0, "begin");
  REQUIRE(qmoe_gguf_writer_append(w, a, 10) == 0, "append");
  CHECK(qmoe_gguf_writer_finish(w) == QMOE_EINVAL && strstr(qmoe_last_error(), "tensor 'a' got 10 of its 136 bytes"), "%s",
        qmoe_last_error());
  CHECK(access(path, F_OK) != 0, "an incomplete output was left behind");
  qmoe_gguf_writer_free(w);
  w = qmoe_gguf_writer_new();
  REQUIRE(qmoe_gguf_writer_add_tensor(w, "a", 8, 2, ne_a, NULL) == 0, "add a");
  REQUIRE(qmoe_gguf_writer_begin(w, path) == 0, "begin");
  CHECK(qmoe_gguf_writer_append(w, b, sizeof b) == QMOE_EINVAL && strstr(qmoe_last_error(), "more than the declared"), "%s",
        qmoe_last_error());
  qmoe_gguf_writer_free(w);
  CHECK(access(path, F_OK) != 0, "an output was left behind after too many bytes");
}

static void test_writer_refusals(void) {
  qmoe_gguf_writer *w = qmoe_gguf_writer_new();
  int64_t ne[5] = { 32, 1, 1, 1, 1 };
  float x[32] = { 0 };
  CHECK(qmoe_gguf_writer_set_u32(w, "general.alignment", 48) == QMOE_EINVAL && strstr(qmoe_last_error(), "power of two"), "align 48");
  CHECK(qmoe_gguf_writer_set_u32(w, "general.alignment", 0) == QMOE_EINVAL, "align 0");
  CHECK(qmoe_gguf_writer_set_u64(w, "general.alignment", 64) == QMOE_EINVAL && strstr(qmoe_last_error(), "u32"), "align as u64");
  CHECK(qmoe_gguf_writer_set_u32(w, "", 1) == QMOE_EINVAL, "empty key");
  CHECK(qmoe_gguf_writer_set_array(w, "k", QMOE_GGUF_STRING, NULL, 0) == QMOE_EINVAL, "set_array of strings");
  CHECK(qmoe_gguf_writer_add_tensor(w, "", 0, 1, ne, x) == QMOE_EINVAL, "empty name");
  CHECK(qmoe_gguf_writer_add_tensor(w, "t", 0, 5, ne, x) == QMOE_EINVAL && strstr(qmoe_last_error(), "n_dims"), "5 dims");
  CHECK(qmoe_gguf_writer_add_tensor(w, "t", 0, 0, ne, x) == QMOE_EINVAL, "0 dims");
  CHECK(qmoe_gguf_writer_add_tensor(w, "t", 99, 1, ne, x) == QMOE_EINVAL && strstr(qmoe_last_error(), "unknown"), "type 99");
  int64_t odd[1] = { 33 };
  CHECK(qmoe_gguf_writer_add_tensor(w, "t", 8, 1, odd, x) == QMOE_EINVAL && strstr(qmoe_last_error(), "block size 32"), "Q8_0 x33");
  int64_t zero[2] = { 32, 0 };
  CHECK(qmoe_gguf_writer_add_tensor(w, "t", 0, 2, zero, x) == QMOE_EINVAL, "dimension 0");
  int64_t huge[4] = { INT64_MAX / 2 + 1, 4, 1, 1 };
  CHECK(qmoe_gguf_writer_add_tensor(w, "t", 0, 2, huge, x) == QMOE_EINVAL && strstr(qmoe_last_error(), "overflows"), "overflow");
  CHECK(qmoe_gguf_writer_add_tensor(w, "t", 0, 1, ne, x) == 0, "valid tensor");
  CHECK(qmoe_gguf_writer_add_tensor(w, "t", 0, 1, ne, x) == QMOE_EINVAL && strstr(qmoe_last_error(), "added twice"), "dup");
  CHECK(qmoe_gguf_writer_begin(w, "/nonexistent-dir/x.gguf") == QMOE_EIO, "unwritable path");
  qmoe_gguf_writer_free(w);
}

/* Bytes of a small valid file with metadata of every kind and a few tensors. */
static unsigned char *small_file(size_t *size, uint64_t *data_end) {
  const char *path = temp_file();
  if (write_all_types(path) != 0) return NULL;
  unsigned char *p = read_all(path, size);
  qmoe_gguf *f;
  *data_end = 0;
  if (qmoe_gguf_open(path, &f) == 0) {
    for (int64_t i = 0; i < qmoe_gguf_tensor_count(f); i++) {
      const qmoe_gguf_tensor *t = qmoe_gguf_tensor_at(f, i);
      if (t->file_offset + t->nbytes > *data_end) *data_end = t->file_offset + t->nbytes;
    }
    qmoe_gguf_close(f);
  }
  unlink(path);
  return p;
}

/* Every prefix that cuts into the header or the tensor data fails with EFORMAT and a message naming an offset;
 * prefixes that keep all tensor data (only trailing padding lost) still open. */
static void test_every_truncation(void) {
  size_t size;
  uint64_t data_end;
  unsigned char *p = small_file(&size, &data_end);
  REQUIRE(p && data_end > 0, "making the file: %s", qmoe_last_error());
  for (size_t n = 0; n < size; n++) {
    unsigned char *copy = malloc(n ? n : 1); /* exact size, so ASan sees any read past the end */
    memcpy(copy, p, n);
    qmoe_gguf *f = NULL;
    int rc = qmoe_gguf_open_memory(copy, n, "trunc.gguf", &f);
    if (n < data_end) {
      CHECK(rc == QMOE_EFORMAT && f == NULL, "prefix of %zu bytes opened (rc %d)", n, rc);
      CHECK(strstr(qmoe_last_error(), "trunc.gguf: offset "), "prefix %zu: message '%s'", n, qmoe_last_error());
    } else {
      CHECK(rc == 0, "prefix of %zu bytes (all data present) failed: %s", n, qmoe_last_error());
    }
    qmoe_gguf_close(f);
    free(copy);
  }
  free(p);
}

/* Reads everything a successfully opened file offers (what a consumer would touch). */
static uint64_t walk(const qmoe_gguf *f) {
  uint64_t sum = 0;
  for (int64_t i = 0; i < qmoe_gguf_kv_count(f); i++) {
    const qmoe_gguf_value *v = qmoe_gguf_kv_value(f, i);
    sum += strlen(qmoe_gguf_kv_key(f, i));
    qmoe_gguf_value stack[16];
    qmoe_gguf_iter its[16];
    int depth = 0;
    if (v->type == QMOE_GGUF_ARRAY) qmoe_gguf_iter_init(&its[depth++], v);
    else if (v->size) sum += ((const unsigned char *)v->data)[v->size - 1];
    while (depth > 0) {
      if (!qmoe_gguf_iter_next(&its[depth - 1], &stack[depth - 1])) {
        depth--;
        continue;
      }
      const qmoe_gguf_value *e = &stack[depth - 1];
      if (e->type == QMOE_GGUF_ARRAY && depth < 16) qmoe_gguf_iter_init(&its[depth++], e);
      else if (e->size) sum += ((const unsigned char *)e->data)[e->size - 1];
    }
  }
  for (int64_t i = 0; i < qmoe_gguf_tensor_count(f); i++) {
    const qmoe_gguf_tensor *t = qmoe_gguf_tensor_at(f, i);
    sum += ((const unsigned char *)t->data)[0] + ((const unsigned char *)t->data)[t->nbytes - 1];
    sum += qmoe_gguf_find_tensor(f, t->name) == t;
  }
  return sum;
}

static void test_random_corruption(void) {
  t_seed();
  size_t size;
  uint64_t data_end;
  unsigned char *p = small_file(&size, &data_end);
  REQUIRE(p && data_end > 0, "making the file: %s", qmoe_last_error());
  unsigned char *copy = malloc(size);
  int opened = 0, refused = 0;
  for (int round = 0; round < 20000; round++) {
    memcpy(copy, p, size);
    int flips = 1 + (int)(t_rand_u64() % 4);
    for (int k = 0; k < flips; k++) {
      size_t at = (size_t)(t_rand_u64() % data_end);
      switch (t_rand_u64() % 3) {
      case 0: copy[at] ^= (unsigned char)(1u << (t_rand_u64() % 8)); break;
      case 1: copy[at] = (unsigned char)t_rand_u64(); break;
      default: copy[at] = (t_rand_u64() % 2) ? 0xff : 0; break;
      }
    }
    size_t n = (t_rand_u64() % 4 == 0) ? (size_t)(t_rand_u64() % size) : size;
    qmoe_gguf *f = NULL;
    int rc = qmoe_gguf_open_memory(copy, n, "mut.gguf", &f);
    if (rc == 0) {
      opened++;
      walk(f);
      qmoe_gguf_close(f);
    } else {
      refused++;
      CHECK(rc == QMOE_EFORMAT, "round %d: rc %d", round, rc);
      CHECK(!strncmp(qmoe_last_error(), "mut.gguf: offset ", 17), "round %d: message '%s'", round, qmoe_last_error());
    }
  }
  CHECK(opened > 0 && refused > 0, "%d opened, %d refused: the mutations test nothing", opened, refused);
  free(copy);
  free(p);
}

static void test_open_errors(void) {
  qmoe_gguf *f = (qmoe_gguf *)1;
  CHECK(qmoe_gguf_open("/nonexistent/x.gguf", &f) == QMOE_EIO && f == NULL, "missing file");
  CHECK(strstr(qmoe_last_error(), "/nonexistent/x.gguf: cannot open"), "%s", qmoe_last_error());
  CHECK(qmoe_gguf_open("/tmp", &f) == QMOE_EIO && strstr(qmoe_last_error(), "not a regular file"), "directory");
  CHECK(qmoe_gguf_open_memory("", 0, "empty", &f) == QMOE_EFORMAT, "empty memory");
  CHECK(qmoe_gguf_open_memory(NULL, 4, "null", &f) == QMOE_EINVAL, "NULL with a size");
}

/* The real fixture: facts about it that gguf-py also reports (tests/gguf/check_gguf_py.py compares all). */
static void test_fixture(void) {
  qmoe_gguf *f;
  const char *path = "tests/data/gemma3-270m-slice.gguf";
  if (access(path, R_OK) != 0) SKIP("run from the repository root (%s not found)", path);
  REQUIRE(qmoe_gguf_open(path, &f) == 0, "open: %s", qmoe_last_error());
  const char *s;
  uint64_t len, bc;
  CHECK(qmoe_gguf_get_str(f, "general.architecture", &s, &len) == 0 && len == 6 && !memcmp(s, "gemma3", 6), "architecture");
  CHECK(qmoe_gguf_get_u64(f, "gemma3.block_count", &bc) == 0 && bc == 18, "block_count");
  qmoe_gguf_value tok, e;
  REQUIRE(qmoe_gguf_get_array(f, "tokenizer.ggml.tokens", QMOE_GGUF_STRING, &tok) == 0, "tokens: %s", qmoe_last_error());
  CHECK(tok.count == 256, "tokens cut to 256, got %llu", (unsigned long long)tok.count);
  CHECK(qmoe_gguf_array_get(&tok, 2, &e) == 0 && e.count == 5 && !memcmp(e.data, "<bos>", 5), "token 2 is <bos>");
  CHECK(qmoe_gguf_tensor_count(f) == 16, "16 tensors");
  const qmoe_gguf_tensor *t = qmoe_gguf_find_tensor(f, "token_embd.weight");
  CHECK(t && t->type == 8 && t->ne[0] == 640 && t->ne[1] == 64 && t->nbytes == 64 * 680, "token_embd slice");
  t = qmoe_gguf_find_tensor(f, "blk.0.attn_k.weight");
  CHECK(t && !strcmp(t->type_name, "Q5_0") && t->nbytes == 112640, "Q5_0 tensor sized");
  CHECK(walk(f) > 0, "walk");
  qmoe_gguf_close(f);
}

int main(void) {
  RUN(test_all_value_types);
  RUN(test_getter_errors);
  RUN(test_random_tensor_tables);
  RUN(test_streaming);
  RUN(test_writer_refusals);
  RUN(test_every_truncation);
  RUN(test_random_corruption);
  RUN(test_open_errors);
  RUN(test_fixture);
  return T_DONE();
}
