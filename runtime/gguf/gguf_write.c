/* gguf_write.c: the GGUF v3 writer. Metadata is encoded as it is set; tensors are declared first and their
 * bytes written (whole or streamed) in declaration order, each at an aligned offset with zeroed padding.
 * Output goes through qmoe_out (runtime/core/output.c): the file appears only when complete, never over an input. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "gguf_internal.h"

typedef struct {
  uint8_t *p;
  size_t n, cap;
} buf;

static void put(buf *b, const void *src, size_t n) {
  if (b->n + n > b->cap) {
    size_t cap = b->cap ? b->cap : 64;
    while (cap < b->n + n) cap *= 2;
    b->p = qmoe_gguf__xrealloc(b->p, cap);
    b->cap = cap;
  }
  if (n) memcpy(b->p + b->n, src, n);
  b->n += n;
}
static void put32(buf *b, uint32_t v) { uint8_t x[4]; gguf_st32(x, v); put(b, x, 4); }
static void put64(buf *b, uint64_t v) { uint8_t x[8]; gguf_st64(x, v); put(b, x, 8); }

typedef struct {
  char *key;
  buf enc; /* value type (u32) then the value, exactly as in the file */
} wkv;

typedef struct {
  char *name;
  int type, n_dims;
  int64_t ne[4];
  uint64_t nbytes, offset;
  const void *data;
} wtensor;

enum { W_BUILDING, W_STREAMING, W_DONE };

struct qmoe_gguf_writer {
  uint32_t alignment;
  wkv *kv;
  size_t n_kv, cap_kv;
  wtensor *t;
  size_t n_t, cap_t;
  int state;
  int verbatim;       /* copy keys and names that are not valid UTF-8 */
  char **inputs;
  size_t n_inputs;
  qmoe_out *out;
  char *path;
  size_t cur;         /* streaming: the tensor being written */
  uint64_t cur_done;  /* bytes of it written so far */
};

qmoe_gguf_writer *qmoe_gguf_writer_new(void) {
  qmoe_gguf_writer *w = qmoe_gguf__xrealloc(NULL, sizeof *w);
  memset(w, 0, sizeof *w);
  w->alignment = GGUF_DEFAULT_ALIGNMENT;
  return w;
}

static int check_building(qmoe_gguf_writer *w, const char *what);
static void abandon(qmoe_gguf_writer *w) {
  qmoe_out_abort(w->out);
  w->out = NULL;
  w->state = W_DONE;
}

int qmoe_gguf_writer_add_input(qmoe_gguf_writer *w, const char *path) {
  int rc = check_building(w, "adding an input");
  if (rc) return rc;
  w->inputs = qmoe_gguf__xrealloc(w->inputs, (w->n_inputs + 1) * sizeof *w->inputs);
  w->inputs[w->n_inputs++] = qmoe_gguf__xstrndup(path, strlen(path));
  return 0;
}

void qmoe_gguf_writer_set_verbatim_names(qmoe_gguf_writer *w, int verbatim) { w->verbatim = verbatim != 0; }

/* A name for a message: bytes outside printable ASCII as \xNN, at most about 200 bytes. */
static const char *shown(const char *s, char *buf, size_t cap) {
  size_t o = 0;
  for (const unsigned char *p = (const unsigned char *)s; *p && o + 5 < cap; p++) {
    if (*p >= 0x20 && *p < 0x7f && *p != '\\') buf[o++] = (char)*p;
    else o += (size_t)snprintf(buf + o, cap - o, "\\x%02x", *p);
  }
  buf[o] = 0;
  return buf;
}

/* QMOE_EINVAL unless name is valid UTF-8 or verbatim copying was asked for. */
static int check_utf8(const qmoe_gguf_writer *w, const char *what, const char *name) {
  if (w->verbatim) return 0;
  int64_t bad = qmoe_utf8_check(name, strlen(name));
  if (bad < 0) return 0;
  char b[256];
  qmoe_set_error("GGUF writer: %s \"%s\" is not valid UTF-8 (byte %lld); it is copied only when verbatim names are "
                 "asked for", what, shown(name, b, sizeof b), (long long)bad);
  return QMOE_EINVAL;
}

void qmoe_gguf_writer_free(qmoe_gguf_writer *w) {
  if (!w) return;
  if (w->state == W_STREAMING) abandon(w);
  for (size_t i = 0; i < w->n_kv; i++) free(w->kv[i].key), free(w->kv[i].enc.p);
  for (size_t i = 0; i < w->n_t; i++) free(w->t[i].name);
  for (size_t i = 0; i < w->n_inputs; i++) free(w->inputs[i]);
  free(w->inputs);
  free(w->kv);
  free(w->t);
  free(w->path);
  free(w);
}

static int check_building(qmoe_gguf_writer *w, const char *what) {
  if (w->state != W_BUILDING) {
    qmoe_set_error("GGUF writer: %s after the file was begun", what);
    return QMOE_EINVAL;
  }
  return 0;
}

/* Stores an encoded value under key (replacing an earlier one); takes ownership of enc. */
static int set_kv(qmoe_gguf_writer *w, const char *key, buf *enc) {
  int rc = check_building(w, "setting metadata");
  if (!rc && (!key || !key[0])) {
    qmoe_set_error("GGUF writer: empty metadata key");
    rc = QMOE_EINVAL;
  }
  if (!rc) rc = check_utf8(w, "key", key);
  if (!rc && !strcmp(key, "general.alignment")) {
    uint32_t a = enc->n == 8 ? gguf_ld32(enc->p + 4) : 0;
    if (gguf_ld32(enc->p) != QMOE_GGUF_U32) {
      qmoe_set_error("GGUF writer: general.alignment must be a u32");
      rc = QMOE_EINVAL;
    } else if (a == 0 || (a & (a - 1))) {
      qmoe_set_error("GGUF writer: general.alignment = %u is not a power of two", a);
      rc = QMOE_EINVAL;
    } else {
      w->alignment = a;
    }
  }
  if (rc) {
    free(enc->p);
    return rc;
  }
  for (size_t i = 0; i < w->n_kv; i++) {
    if (!strcmp(w->kv[i].key, key)) {
      free(w->kv[i].enc.p);
      w->kv[i].enc = *enc;
      return 0;
    }
  }
  if (w->n_kv == w->cap_kv) {
    w->cap_kv = w->cap_kv ? 2 * w->cap_kv : 16;
    w->kv = qmoe_gguf__xrealloc(w->kv, w->cap_kv * sizeof *w->kv);
  }
  w->kv[w->n_kv].key = qmoe_gguf__xstrndup(key, strlen(key));
  w->kv[w->n_kv].enc = *enc;
  w->n_kv++;
  return 0;
}

/* Encodes a host-layout scalar of type vtype (n bytes at p) little-endian. */
static void put_scalar(buf *b, int vtype, const void *p) {
  size_t n = qmoe_gguf__scalar_size(vtype);
  uint8_t x[8];
  if (n == 1) {
    memcpy(x, p, 1);
  } else if (n == 2) {
    uint16_t v;
    memcpy(&v, p, 2);
    x[0] = (uint8_t)v, x[1] = (uint8_t)(v >> 8);
  } else if (n == 4) {
    uint32_t v;
    memcpy(&v, p, 4);
    gguf_st32(x, v);
  } else {
    uint64_t v;
    memcpy(&v, p, 8);
    gguf_st64(x, v);
  }
  put(b, x, n);
}

static int set_scalar(qmoe_gguf_writer *w, const char *key, int vtype, const void *p) {
  buf b = { 0 };
  put32(&b, (uint32_t)vtype);
  put_scalar(&b, vtype, p);
  return set_kv(w, key, &b);
}

int qmoe_gguf_writer_set_u8(qmoe_gguf_writer *w, const char *key, uint8_t v) { return set_scalar(w, key, QMOE_GGUF_U8, &v); }
int qmoe_gguf_writer_set_i8(qmoe_gguf_writer *w, const char *key, int8_t v) { return set_scalar(w, key, QMOE_GGUF_I8, &v); }
int qmoe_gguf_writer_set_u16(qmoe_gguf_writer *w, const char *key, uint16_t v) { return set_scalar(w, key, QMOE_GGUF_U16, &v); }
int qmoe_gguf_writer_set_i16(qmoe_gguf_writer *w, const char *key, int16_t v) { return set_scalar(w, key, QMOE_GGUF_I16, &v); }
int qmoe_gguf_writer_set_u32(qmoe_gguf_writer *w, const char *key, uint32_t v) { return set_scalar(w, key, QMOE_GGUF_U32, &v); }
int qmoe_gguf_writer_set_i32(qmoe_gguf_writer *w, const char *key, int32_t v) { return set_scalar(w, key, QMOE_GGUF_I32, &v); }
int qmoe_gguf_writer_set_u64(qmoe_gguf_writer *w, const char *key, uint64_t v) { return set_scalar(w, key, QMOE_GGUF_U64, &v); }
int qmoe_gguf_writer_set_i64(qmoe_gguf_writer *w, const char *key, int64_t v) { return set_scalar(w, key, QMOE_GGUF_I64, &v); }
int qmoe_gguf_writer_set_f32(qmoe_gguf_writer *w, const char *key, float v) { return set_scalar(w, key, QMOE_GGUF_F32, &v); }
int qmoe_gguf_writer_set_f64(qmoe_gguf_writer *w, const char *key, double v) { return set_scalar(w, key, QMOE_GGUF_F64, &v); }

int qmoe_gguf_writer_set_bool(qmoe_gguf_writer *w, const char *key, int v) {
  uint8_t b = v ? 1 : 0;
  return set_scalar(w, key, QMOE_GGUF_BOOL, &b);
}

int qmoe_gguf_writer_set_str(qmoe_gguf_writer *w, const char *key, const char *s, uint64_t len) {
  buf b = { 0 };
  put32(&b, QMOE_GGUF_STRING);
  put64(&b, len);
  put(&b, s, (size_t)len);
  return set_kv(w, key, &b);
}

int qmoe_gguf_writer_set_array(qmoe_gguf_writer *w, const char *key, int elem_type, const void *elems, uint64_t count) {
  size_t esz = qmoe_gguf__scalar_size(elem_type);
  if (!esz) {
    qmoe_set_error("GGUF writer: key '%s': qmoe_gguf_writer_set_array takes fixed-size elements, not %s",
                   key ? key : "", qmoe_gguf_type_name_of_value(elem_type));
    return QMOE_EINVAL;
  }
  buf b = { 0 };
  put32(&b, QMOE_GGUF_ARRAY);
  put32(&b, (uint32_t)elem_type);
  put64(&b, count);
  const uint8_t *p = elems;
  for (uint64_t i = 0; i < count; i++) {
    if (elem_type == QMOE_GGUF_BOOL) {
      uint8_t v = p[i] ? 1 : 0;
      put(&b, &v, 1);
    } else {
      put_scalar(&b, elem_type, p + i * esz);
    }
  }
  return set_kv(w, key, &b);
}

int qmoe_gguf_writer_set_str_array(qmoe_gguf_writer *w, const char *key, const char *const *strs, uint64_t count) {
  buf b = { 0 };
  put32(&b, QMOE_GGUF_ARRAY);
  put32(&b, QMOE_GGUF_STRING);
  put64(&b, count);
  for (uint64_t i = 0; i < count; i++) {
    size_t n = strlen(strs[i]);
    put64(&b, n);
    put(&b, strs[i], n);
  }
  return set_kv(w, key, &b);
}

int qmoe_gguf_writer_set_value(qmoe_gguf_writer *w, const char *key, const qmoe_gguf_value *v) {
  buf b = { 0 };
  put32(&b, (uint32_t)v->type);
  if (v->type == QMOE_GGUF_STRING) {
    put64(&b, v->count);
  } else if (v->type == QMOE_GGUF_ARRAY) {
    put32(&b, (uint32_t)v->elem_type);
    put64(&b, v->count);
  } else if (!qmoe_gguf__scalar_size(v->type)) {
    free(b.p);
    qmoe_set_error("GGUF writer: key '%s': value type %d is unknown", key ? key : "", v->type);
    return QMOE_EINVAL;
  }
  /* Scalars and array elements of a read value are already in file encoding. */
  put(&b, v->data, (size_t)v->size);
  return set_kv(w, key, &b);
}

int qmoe_gguf_writer_remove(qmoe_gguf_writer *w, const char *key) {
  for (size_t i = 0; i < w->n_kv; i++) {
    if (!strcmp(w->kv[i].key, key)) {
      free(w->kv[i].key);
      free(w->kv[i].enc.p);
      memmove(&w->kv[i], &w->kv[i + 1], (w->n_kv - i - 1) * sizeof *w->kv);
      w->n_kv--;
      if (!strcmp(key, "general.alignment")) w->alignment = GGUF_DEFAULT_ALIGNMENT;
      return 0;
    }
  }
  return 0;
}

int qmoe_gguf_writer_add_tensor(qmoe_gguf_writer *w, const char *name, int ggml_type, int n_dims, const int64_t *ne,
                                const void *data) {
  int rc = check_building(w, "adding a tensor");
  if (rc) return rc;
  if (!name || !name[0]) {
    qmoe_set_error("GGUF writer: empty tensor name");
    return QMOE_EINVAL;
  }
  rc = check_utf8(w, "tensor name", name);
  if (rc) return rc;
  for (size_t i = 0; i < w->n_t; i++) {
    if (!strcmp(w->t[i].name, name)) {
      qmoe_set_error("GGUF writer: tensor '%s' added twice", name);
      return QMOE_EINVAL;
    }
  }
  const char *tname;
  int64_t be, bb;
  if (qmoe_gguf_type_size(ggml_type, &tname, &be, &bb) != 0) {
    qmoe_set_error("GGUF writer: tensor '%s': type id %d is unknown", name, ggml_type);
    return QMOE_EINVAL;
  }
  if (n_dims < 1 || n_dims > 4) {
    qmoe_set_error("GGUF writer: tensor '%s': n_dims = %d (must be 1 to 4)", name, n_dims);
    return QMOE_EINVAL;
  }
  wtensor t = { 0 };
  t.type = ggml_type;
  t.n_dims = n_dims;
  for (int d = 0; d < 4; d++) t.ne[d] = d < n_dims ? ne[d] : 1;
  uint64_t rows = 1;
  for (int d = 0; d < n_dims; d++) {
    if (t.ne[d] < 1) {
      qmoe_set_error("GGUF writer: tensor '%s': dimension %d is %lld (must be at least 1)", name, d, (long long)t.ne[d]);
      return QMOE_EINVAL;
    }
    if (d > 0 && __builtin_mul_overflow(rows, (uint64_t)t.ne[d], &rows)) rows = UINT64_MAX;
  }
  if (t.ne[0] % be) {
    qmoe_set_error("GGUF writer: tensor '%s': row length %lld is not a multiple of the %s block size %lld", name,
                   (long long)t.ne[0], tname, (long long)be);
    return QMOE_EINVAL;
  }
  uint64_t row_bytes;
  if (rows == UINT64_MAX || __builtin_mul_overflow((uint64_t)(t.ne[0] / be), (uint64_t)bb, &row_bytes) ||
      __builtin_mul_overflow(row_bytes, rows, &t.nbytes) || t.nbytes > (uint64_t)INT64_MAX) {
    qmoe_set_error("GGUF writer: tensor '%s': size overflows", name);
    return QMOE_EINVAL;
  }
  t.name = qmoe_gguf__xstrndup(name, strlen(name));
  t.data = data;
  if (w->n_t == w->cap_t) {
    w->cap_t = w->cap_t ? 2 * w->cap_t : 16;
    w->t = qmoe_gguf__xrealloc(w->t, w->cap_t * sizeof *w->t);
  }
  w->t[w->n_t++] = t;
  return 0;
}

static int write_bytes(qmoe_gguf_writer *w, const void *p, size_t n) {
  if (n && qmoe_out_write(w->out, p, n) != 0) {
    abandon(w);
    return QMOE_EIO;
  }
  return 0;
}

static int write_zeros(qmoe_gguf_writer *w, uint64_t n) {
  static const uint8_t zeros[4096];
  while (n) {
    size_t k = n < sizeof zeros ? (size_t)n : sizeof zeros;
    int rc = write_bytes(w, zeros, k);
    if (rc) return rc;
    n -= k;
  }
  return 0;
}

static uint64_t pad_to(uint64_t pos, uint64_t a) { return (a - pos % a) % a; }

int qmoe_gguf_writer_begin(qmoe_gguf_writer *w, const char *path) {
  int rc = check_building(w, "begin");
  if (rc) return rc;
  /* Offsets in the data section: each tensor at the next multiple of the alignment. */
  uint64_t off = 0;
  for (size_t i = 0; i < w->n_t; i++) {
    off += pad_to(off, w->alignment);
    w->t[i].offset = off;
    if (__builtin_add_overflow(off, w->t[i].nbytes, &off)) {
      qmoe_set_error("GGUF writer: %s: data section size overflows", path);
      return QMOE_EINVAL;
    }
  }
  buf h = { 0 };
  put(&h, GGUF_MAGIC, 4);
  put32(&h, 3);
  put64(&h, w->n_t);
  put64(&h, w->n_kv);
  for (size_t i = 0; i < w->n_kv; i++) {
    size_t n = strlen(w->kv[i].key);
    put64(&h, n);
    put(&h, w->kv[i].key, n);
    put(&h, w->kv[i].enc.p, w->kv[i].enc.n);
  }
  for (size_t i = 0; i < w->n_t; i++) {
    const wtensor *t = &w->t[i];
    size_t n = strlen(t->name);
    put64(&h, n);
    put(&h, t->name, n);
    put32(&h, (uint32_t)t->n_dims);
    for (int d = 0; d < t->n_dims; d++) put64(&h, (uint64_t)t->ne[d]);
    put32(&h, (uint32_t)t->type);
    put64(&h, t->offset);
  }
  free(w->path);
  w->path = qmoe_gguf__xstrndup(path, strlen(path));
  uint64_t total = h.n + pad_to(h.n, w->alignment) + off;
  if (w->n_t) total += pad_to(w->t[w->n_t - 1].offset + w->t[w->n_t - 1].nbytes, w->alignment);
  rc = qmoe_out_open(path, (const char *const *)w->inputs, w->n_inputs, total, &w->out);
  if (rc) {
    free(h.p);
    return rc;
  }
  w->state = W_STREAMING;
  w->cur = 0;
  w->cur_done = 0;
  rc = write_bytes(w, h.p, h.n);
  if (!rc) rc = write_zeros(w, pad_to(h.n, w->alignment));
  free(h.p);
  return rc;
}

int qmoe_gguf_writer_append(qmoe_gguf_writer *w, const void *bytes, uint64_t n) {
  if (w->state != W_STREAMING) {
    qmoe_set_error("GGUF writer: append before begin or after finish");
    return QMOE_EINVAL;
  }
  const uint8_t *p = bytes;
  while (n) {
    if (w->cur >= w->n_t) {
      qmoe_set_error("%s: %llu bytes more than the declared tensors hold", w->path, (unsigned long long)n);
      abandon(w);
      return QMOE_EINVAL;
    }
    wtensor *t = &w->t[w->cur];
    uint64_t take = t->nbytes - w->cur_done;
    if (take > n) take = n;
    int rc = write_bytes(w, p, (size_t)take);
    if (rc) return rc;
    p += take, n -= take;
    w->cur_done += take;
    if (w->cur_done == t->nbytes) { /* tensor complete: zero padding up to the next aligned offset */
      rc = write_zeros(w, pad_to(t->offset + t->nbytes, w->alignment));
      if (rc) return rc;
      w->cur++;
      w->cur_done = 0;
    }
  }
  return 0;
}

int qmoe_gguf_writer_finish(qmoe_gguf_writer *w) {
  if (w->state != W_STREAMING) {
    qmoe_set_error("GGUF writer: finish before begin or after finish");
    return QMOE_EINVAL;
  }
  if (w->cur < w->n_t) {
    qmoe_set_error("%s: tensor '%s' got %llu of its %llu bytes", w->path, w->t[w->cur].name,
                   (unsigned long long)w->cur_done, (unsigned long long)w->t[w->cur].nbytes);
    abandon(w);
    return QMOE_EINVAL;
  }
  qmoe_out *o = w->out;
  w->out = NULL;
  w->state = W_DONE;
  return qmoe_out_commit(o);
}

int qmoe_gguf_writer_write(qmoe_gguf_writer *w, const char *path) {
  for (size_t i = 0; i < w->n_t; i++) {
    if (!w->t[i].data) {
      qmoe_set_error("GGUF writer: %s: tensor '%s' was declared without data (stream it with begin/append/finish)",
                     path, w->t[i].name);
      return QMOE_EINVAL;
    }
  }
  int rc = qmoe_gguf_writer_begin(w, path);
  for (size_t i = 0; !rc && i < w->n_t; i++) rc = qmoe_gguf_writer_append(w, w->t[i].data, w->t[i].nbytes);
  if (!rc) rc = qmoe_gguf_writer_finish(w);
  return rc;
}
