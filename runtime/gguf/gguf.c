/* gguf.c: the GGUF v2/v3 reader. It maps a file (or takes bytes in memory), validates every count, length,
 * offset and size against the bytes actually there before using it, and answers metadata and tensor-table
 * queries. After qmoe_gguf_open succeeds, nothing in the file is trusted that was not checked. */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include "gguf_internal.h"

void *qmoe_gguf__xrealloc(void *p, size_t n) {
  void *q = realloc(p, n ? n : 1);
  if (!q) {
    fprintf(stderr, "qmoe: out of memory (allocating %zu bytes)\n", n);
    abort();
  }
  return q;
}

char *qmoe_gguf__xstrndup(const char *s, size_t n) {
  char *d = qmoe_gguf__xrealloc(NULL, n + 1);
  memcpy(d, s, n);
  d[n] = 0;
  return d;
}

size_t qmoe_gguf__scalar_size(int vtype) {
  switch (vtype) {
  case QMOE_GGUF_U8: case QMOE_GGUF_I8: case QMOE_GGUF_BOOL: return 1;
  case QMOE_GGUF_U16: case QMOE_GGUF_I16: return 2;
  case QMOE_GGUF_U32: case QMOE_GGUF_I32: case QMOE_GGUF_F32: return 4;
  case QMOE_GGUF_U64: case QMOE_GGUF_I64: case QMOE_GGUF_F64: return 8;
  default: return 0;
  }
}

const char *qmoe_gguf_type_name_of_value(int vtype) {
  static const char *const names[] = { "u8", "i8", "u16", "i16", "u32", "i32", "f32", "bool",
                                       "string", "array", "u64", "i64", "f64" };
  return vtype >= 0 && vtype <= QMOE_GGUF_F64 ? names[vtype] : "?";
}

/* ---- parsing ------------------------------------------------------------------------------------- */

typedef struct {
  qmoe_gguf *f;
  uint64_t pos;
  char where[200]; /* what is being read: "key 'x'", "tensor #3 'y'"; empty in the fixed header */
} parser;

/* Copies up to 80 bytes of s into dst for a message, replacing bytes that are not printable ASCII. */
static void printable(char *dst, size_t cap, const void *s, uint64_t len) {
  const unsigned char *p = s;
  size_t n = 0, max = cap > 4 ? cap - 4 : 0;
  if (max > 80) max = 80;
  uint64_t i = 0;
  for (; i < len && n < max; i++) dst[n++] = (p[i] >= 0x20 && p[i] < 0x7f) ? (char)p[i] : '?';
  if (i < len && cap >= 4) dst[n++] = '.', dst[n++] = '.', dst[n++] = '.';
  dst[n] = 0;
}

static int fail(parser *ps, uint64_t off, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int fail(parser *ps, uint64_t off, const char *fmt, ...) {
  char msg[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  qmoe_set_error("%s: offset %llu: %s%s%s", ps->f->path, (unsigned long long)off, ps->where,
                 ps->where[0] ? ": " : "", msg);
  return QMOE_EFORMAT;
}

static uint64_t left(const parser *ps) { return ps->f->size - ps->pos; }

static int need(parser *ps, uint64_t n, const char *what) {
  if (n > left(ps))
    return fail(ps, ps->pos, "truncated: %s needs %llu bytes but only %llu are left (file is %llu bytes)", what,
                (unsigned long long)n, (unsigned long long)left(ps), (unsigned long long)ps->f->size);
  return 0;
}

static int read_u32(parser *ps, const char *what, uint32_t *v) {
  int rc = need(ps, 4, what);
  if (rc) return rc;
  *v = gguf_ld32(ps->f->base + ps->pos);
  ps->pos += 4;
  return 0;
}

static int read_u64(parser *ps, const char *what, uint64_t *v) {
  int rc = need(ps, 8, what);
  if (rc) return rc;
  *v = gguf_ld64(ps->f->base + ps->pos);
  ps->pos += 8;
  return 0;
}

/* A string: u64 length, then the bytes. The length is checked against the bytes left before use. */
static int read_string(parser *ps, const char *what, const uint8_t **s, uint64_t *len) {
  uint64_t at = ps->pos;
  int rc = read_u64(ps, what, len);
  if (rc) return rc;
  if (*len > left(ps)) {
    ps->pos = at;
    return fail(ps, at, "truncated: %s of length %llu runs past the end of the file (%llu bytes left after its length)",
                what, (unsigned long long)*len, (unsigned long long)(left(ps) - 8));
  }
  *s = ps->f->base + ps->pos;
  ps->pos += *len;
  return 0;
}

/* A name (key or tensor name): a non-empty string without NUL bytes. */
static int read_name(parser *ps, const char *what, const uint8_t **s, uint64_t *len) {
  uint64_t at = ps->pos;
  int rc = read_string(ps, what, s, len);
  if (rc) return rc;
  if (*len == 0) return fail(ps, at, "%s is empty", what);
  if (memchr(*s, 0, *len)) return fail(ps, at, "%s contains a NUL byte", what);
  return 0;
}

static int parse_value(parser *ps, int vtype, int depth, qmoe_gguf_value *out);

/* The elements of an array whose header (element type, count) has been read. */
static int parse_elements(parser *ps, uint32_t et, uint64_t n, int depth, uint64_t header_at) {
  uint64_t esz = et <= QMOE_GGUF_F64 ? qmoe_gguf__scalar_size((int)et) : 0;
  if (esz) {
    uint64_t bytes;
    if (__builtin_mul_overflow(n, esz, &bytes) || bytes > left(ps))
      return fail(ps, header_at, "truncated: array of %llu %s elements needs %llu bytes per element but only %llu bytes are left",
                  (unsigned long long)n, qmoe_gguf_type_name_of_value((int)et), (unsigned long long)esz,
                  (unsigned long long)left(ps));
    if (et == QMOE_GGUF_BOOL) {
      const uint8_t *p = ps->f->base + ps->pos;
      for (uint64_t i = 0; i < n; i++)
        if (p[i] > 1) return fail(ps, ps->pos + i, "array element %llu: bool value %u is not 0 or 1", (unsigned long long)i, p[i]);
    }
    ps->pos += bytes;
    return 0;
  }
  if (et == QMOE_GGUF_STRING) {
    /* Each string takes at least its 8-byte length: a count that cannot fit is refused before looping. */
    if (n > left(ps) / 8)
      return fail(ps, header_at, "truncated: array of %llu strings cannot fit in the %llu bytes left",
                  (unsigned long long)n, (unsigned long long)left(ps));
    for (uint64_t i = 0; i < n; i++) {
      const uint8_t *s;
      uint64_t len;
      char what[64];
      snprintf(what, sizeof what, "string element %llu", (unsigned long long)i);
      int rc = read_string(ps, what, &s, &len);
      if (rc) return rc;
    }
    return 0;
  }
  if (et == QMOE_GGUF_ARRAY) {
    if (depth + 1 >= GGUF_MAX_ARRAY_DEPTH)
      return fail(ps, header_at, "arrays nested more than %d deep are not supported", GGUF_MAX_ARRAY_DEPTH);
    /* Each inner array takes at least its 12-byte header. */
    if (n > left(ps) / 12)
      return fail(ps, header_at, "truncated: array of %llu arrays cannot fit in the %llu bytes left",
                  (unsigned long long)n, (unsigned long long)left(ps));
    for (uint64_t i = 0; i < n; i++) {
      qmoe_gguf_value inner;
      int rc = parse_value(ps, QMOE_GGUF_ARRAY, depth + 1, &inner);
      if (rc) return rc;
    }
    return 0;
  }
  return fail(ps, header_at, "array element type %u is unknown (GGUF value types are 0 to 12)", et);
}

static int parse_value(parser *ps, int vtype, int depth, qmoe_gguf_value *out) {
  memset(out, 0, sizeof *out);
  out->type = vtype;
  out->elem_type = -1;
  uint64_t esz = qmoe_gguf__scalar_size(vtype);
  if (esz) {
    int rc = need(ps, esz, qmoe_gguf_type_name_of_value(vtype));
    if (rc) return rc;
    const uint8_t *p = ps->f->base + ps->pos;
    if (vtype == QMOE_GGUF_BOOL && p[0] > 1) return fail(ps, ps->pos, "bool value %u is not 0 or 1", p[0]);
    out->count = 1, out->data = p, out->size = esz, out->offset = ps->pos;
    ps->pos += esz;
    return 0;
  }
  if (vtype == QMOE_GGUF_STRING) {
    const uint8_t *s;
    uint64_t len;
    int rc = read_string(ps, "string value", &s, &len);
    if (rc) return rc;
    out->count = len, out->data = s, out->size = len, out->offset = ps->pos - len;
    return 0;
  }
  if (vtype == QMOE_GGUF_ARRAY) {
    uint64_t at = ps->pos, n;
    uint32_t et;
    int rc = read_u32(ps, "array element type", &et);
    if (!rc) rc = read_u64(ps, "array length", &n);
    if (rc) return rc;
    uint64_t start = ps->pos;
    rc = parse_elements(ps, et, n, depth, at);
    if (rc) return rc;
    out->elem_type = (int)et, out->count = n, out->data = ps->f->base + start;
    out->size = ps->pos - start, out->offset = start;
    return 0;
  }
  return fail(ps, ps->pos - 4, "value type %d is unknown (GGUF value types are 0 to 12)", vtype);
}

static int cmp_name_index(const void *a, const void *b) {
  const qmoe_gguf__name_index *x = a, *y = b;
  int c = strcmp(x->name, y->name);
  return c ? c : (x->index > y->index) - (x->index < y->index);
}

static int parse_kvs(parser *ps, uint64_t n_kv) {
  qmoe_gguf *f = ps->f;
  size_t cap = 0;
  for (uint64_t i = 0; i < n_kv; i++) {
    uint64_t at = ps->pos;
    const uint8_t *k;
    uint64_t klen;
    snprintf(ps->where, sizeof ps->where, "key #%llu", (unsigned long long)i);
    int rc = read_name(ps, "key", &k, &klen);
    if (rc) return rc;
    char shown[96];
    printable(shown, sizeof shown, k, klen);
    snprintf(ps->where, sizeof ps->where, "key '%s'", shown);
    uint32_t vt;
    rc = read_u32(ps, "value type", &vt);
    if (rc) return rc;
    if ((size_t)f->n_kv == cap) {
      cap = cap ? 2 * cap : 16;
      f->kv = qmoe_gguf__xrealloc(f->kv, cap * sizeof *f->kv);
    }
    qmoe_gguf__kv *e = &f->kv[f->n_kv];
    e->key = qmoe_gguf__xstrndup((const char *)k, (size_t)klen);
    e->offset = at;
    f->n_kv++;
    if (vt > QMOE_GGUF_F64) return fail(ps, ps->pos - 4, "value type %u is unknown (GGUF value types are 0 to 12)", vt);
    rc = parse_value(ps, (int)vt, 0, &e->value);
    if (rc) return rc;
    if (!strcmp(e->key, "general.alignment")) {
      if (vt != QMOE_GGUF_U32)
        return fail(ps, at, "general.alignment must be a u32, not %s", qmoe_gguf_type_name_of_value((int)vt));
      uint32_t a = gguf_ld32(e->value.data);
      if (a == 0 || (a & (a - 1)))
        return fail(ps, e->value.offset, "general.alignment = %u is not a power of two", a);
      f->alignment = a;
    }
  }
  ps->where[0] = 0;
  /* Duplicate keys make lookups ambiguous: refuse them. */
  f->kv_sorted = qmoe_gguf__xrealloc(NULL, (size_t)(f->n_kv ? f->n_kv : 1) * sizeof *f->kv_sorted);
  for (int64_t i = 0; i < f->n_kv; i++) f->kv_sorted[i] = (qmoe_gguf__name_index){ f->kv[i].key, i };
  qsort(f->kv_sorted, (size_t)f->n_kv, sizeof *f->kv_sorted, cmp_name_index);
  for (int64_t i = 1; i < f->n_kv; i++) {
    if (!strcmp(f->kv_sorted[i - 1].name, f->kv_sorted[i].name)) {
      const qmoe_gguf__kv *a = &f->kv[f->kv_sorted[i - 1].index], *b = &f->kv[f->kv_sorted[i].index];
      char shown[96];
      printable(shown, sizeof shown, a->key, strlen(a->key));
      return fail(ps, b->offset, "key '%s' appears twice (entries at offsets %llu and %llu)", shown,
                  (unsigned long long)a->offset, (unsigned long long)b->offset);
    }
  }
  return 0;
}

static int parse_tensor_info(parser *ps, uint64_t i, qmoe_gguf_tensor *t) {
  memset(t, 0, sizeof *t);
  t->info_offset = ps->pos;
  const uint8_t *name;
  uint64_t nlen;
  snprintf(ps->where, sizeof ps->where, "tensor #%llu", (unsigned long long)i);
  int rc = read_name(ps, "tensor name", &name, &nlen);
  if (rc) return rc;
  t->name = qmoe_gguf__xstrndup((const char *)name, (size_t)nlen);
  char shown[96];
  printable(shown, sizeof shown, name, nlen);
  snprintf(ps->where, sizeof ps->where, "tensor #%llu '%s'", (unsigned long long)i, shown);
  uint32_t nd;
  rc = read_u32(ps, "n_dims", &nd);
  if (rc) return rc;
  if (nd < 1 || nd > 4) return fail(ps, ps->pos - 4, "n_dims = %u (must be 1 to 4)", nd);
  t->n_dims = (int)nd;
  for (int d = 0; d < 4; d++) t->ne[d] = 1;
  for (uint32_t d = 0; d < nd; d++) {
    uint64_t ne;
    rc = read_u64(ps, "dimension", &ne);
    if (rc) return rc;
    if (ne == 0) return fail(ps, ps->pos - 8, "dimension %u is 0 (every dimension must be at least 1)", d);
    if (ne > (uint64_t)INT64_MAX) return fail(ps, ps->pos - 8, "dimension %u = %llu is too large", d, (unsigned long long)ne);
    t->ne[d] = (int64_t)ne;
  }
  uint32_t type;
  rc = read_u32(ps, "tensor type", &type);
  if (rc) return rc;
  int64_t be, bb;
  if (type > 0x7fffffffu || qmoe_gguf_type_size((int)type, &t->type_name, &be, &bb) != 0)
    return fail(ps, ps->pos - 4, "type id %u is unknown (not a GGML type)", type);
  t->type = (int)type;
  rc = read_u64(ps, "data offset", &t->offset);
  if (rc) return rc;
  /* Sizes, overflow-checked: elements, rows, bytes per row, bytes. */
  int64_t n = t->ne[0], rows = 1;
  for (int d = 1; d < 4; d++) {
    if (__builtin_mul_overflow(rows, t->ne[d], &rows) || __builtin_mul_overflow(n, t->ne[d], &n))
      return fail(ps, t->info_offset, "element count %lld x %lld x %lld x %lld overflows 64 bits", (long long)t->ne[0],
                  (long long)t->ne[1], (long long)t->ne[2], (long long)t->ne[3]);
  }
  t->n_elements = n;
  t->n_rows = rows;
  if (t->ne[0] % be)
    return fail(ps, t->info_offset, "row length ne[0] = %lld is not a multiple of the %s block size %lld",
                (long long)t->ne[0], t->type_name, (long long)be);
  uint64_t rb, nb;
  if (__builtin_mul_overflow((uint64_t)(t->ne[0] / be), (uint64_t)bb, &rb) || __builtin_mul_overflow(rb, (uint64_t)rows, &nb))
    return fail(ps, t->info_offset, "byte size of %lld %s elements overflows 64 bits", (long long)n, t->type_name);
  t->row_bytes = rb;
  t->nbytes = nb;
  return 0;
}

typedef struct {
  uint64_t start;
  int64_t index;
} span;

static int cmp_span(const void *a, const void *b) {
  const span *x = a, *y = b;
  if (x->start != y->start) return x->start < y->start ? -1 : 1;
  return (x->index > y->index) - (x->index < y->index);
}

static int parse_tensors(parser *ps, uint64_t n_tensors) {
  qmoe_gguf *f = ps->f;
  size_t cap = 0;
  for (uint64_t i = 0; i < n_tensors; i++) {
    if ((size_t)f->n_tensors == cap) {
      cap = cap ? 2 * cap : 16;
      f->tensors = qmoe_gguf__xrealloc(f->tensors, cap * sizeof *f->tensors);
    }
    qmoe_gguf_tensor *t = &f->tensors[f->n_tensors];
    int rc = parse_tensor_info(ps, i, t);
    if (t->name) f->n_tensors++; /* owned from here on, freed by close */
    if (rc) return rc;
  }
  ps->where[0] = 0;
  /* The data section starts at the next multiple of the alignment. */
  uint64_t a = f->alignment, end;
  if (__builtin_add_overflow(ps->pos, a - 1, &end)) return fail(ps, ps->pos, "data section offset overflows");
  f->data_offset = end / a * a;
  for (int64_t i = 0; i < f->n_tensors; i++) {
    qmoe_gguf_tensor *t = &f->tensors[i];
    char shown[96];
    printable(shown, sizeof shown, t->name, strlen(t->name));
    snprintf(ps->where, sizeof ps->where, "tensor #%lld '%s'", (long long)i, shown);
    if (t->offset % a)
      return fail(ps, t->info_offset, "data offset %llu is not a multiple of the alignment %llu",
                  (unsigned long long)t->offset, (unsigned long long)a);
    uint64_t abs, stop;
    if (__builtin_add_overflow(f->data_offset, t->offset, &abs) || __builtin_add_overflow(abs, t->nbytes, &stop) ||
        stop > f->size)
      return fail(ps, t->info_offset, "data (offset %llu + %llu bytes, data section at %llu) extends past the end of the file (%llu bytes)",
                  (unsigned long long)t->offset, (unsigned long long)t->nbytes, (unsigned long long)f->data_offset,
                  (unsigned long long)f->size);
    t->file_offset = abs;
    t->data = f->base + abs;
  }
  ps->where[0] = 0;
  if (f->n_tensors == 0) return 0;
  /* No two tensors may share bytes. */
  span *s = qmoe_gguf__xrealloc(NULL, (size_t)f->n_tensors * sizeof *s);
  for (int64_t i = 0; i < f->n_tensors; i++) s[i] = (span){ f->tensors[i].offset, i };
  qsort(s, (size_t)f->n_tensors, sizeof *s, cmp_span);
  for (int64_t i = 1; i < f->n_tensors; i++) {
    const qmoe_gguf_tensor *p = &f->tensors[s[i - 1].index], *t = &f->tensors[s[i].index];
    if (t->offset < p->offset + p->nbytes) {
      char a1[96], a2[96];
      printable(a1, sizeof a1, t->name, strlen(t->name));
      printable(a2, sizeof a2, p->name, strlen(p->name));
      int rc = fail(ps, t->info_offset, "tensor '%s' data [%llu, %llu) overlaps tensor '%s' data [%llu, %llu)", a1,
                    (unsigned long long)t->offset, (unsigned long long)(t->offset + t->nbytes), a2,
                    (unsigned long long)p->offset, (unsigned long long)(p->offset + p->nbytes));
      free(s);
      return rc;
    }
  }
  free(s);
  /* Duplicate names make lookups ambiguous: refuse them. */
  f->tensors_sorted = qmoe_gguf__xrealloc(NULL, (size_t)f->n_tensors * sizeof *f->tensors_sorted);
  for (int64_t i = 0; i < f->n_tensors; i++) f->tensors_sorted[i] = (qmoe_gguf__name_index){ f->tensors[i].name, i };
  qsort(f->tensors_sorted, (size_t)f->n_tensors, sizeof *f->tensors_sorted, cmp_name_index);
  for (int64_t i = 1; i < f->n_tensors; i++) {
    if (!strcmp(f->tensors_sorted[i - 1].name, f->tensors_sorted[i].name)) {
      const qmoe_gguf_tensor *a = &f->tensors[f->tensors_sorted[i - 1].index], *b = &f->tensors[f->tensors_sorted[i].index];
      char shown[96];
      printable(shown, sizeof shown, a->name, strlen(a->name));
      return fail(ps, b->info_offset, "duplicate tensor name '%s' (tensors #%lld and #%lld)", shown,
                  (long long)f->tensors_sorted[i - 1].index, (long long)f->tensors_sorted[i].index);
    }
  }
  return 0;
}

static int parse_file(qmoe_gguf *f) {
  parser ps = { .f = f, .pos = 0 };
  ps.where[0] = 0;
  f->alignment = GGUF_DEFAULT_ALIGNMENT;
  if (f->size < 4) return fail(&ps, 0, "truncated: %llu bytes, too short for the GGUF magic: not a GGUF file", (unsigned long long)f->size);
  if (memcmp(f->base, GGUF_MAGIC, 4)) {
    char shown[16];
    printable(shown, sizeof shown, f->base, 4);
    return fail(&ps, 0, "bad magic '%s' (expected 'GGUF'): not a GGUF file", shown);
  }
  ps.pos = 4;
  uint32_t version;
  int rc = read_u32(&ps, "version", &version);
  if (rc) return rc;
  if (version == 1)
    return fail(&ps, 4, "GGUF version 1 is not supported (only versions 2 and 3; convert the file again with a current llama.cpp)");
  if (version == 0x02000000u || version == 0x03000000u)
    return fail(&ps, 4, "big-endian GGUF is not supported (version field reads %u byte-swapped)", version >> 24);
  if (version != 2 && version != 3) return fail(&ps, 4, "GGUF version %u is not supported (only versions 2 and 3)", version);
  f->version = version;
  uint64_t n_tensors, n_kv;
  rc = read_u64(&ps, "tensor count", &n_tensors);
  if (!rc) rc = read_u64(&ps, "metadata count", &n_kv);
  if (rc) return rc;
  /* Counts are checked against the smallest possible entry before anything is allocated: a metadata entry
   * takes at least 14 bytes (8 key length, 1 key byte, 4 type, 1 value byte), a tensor entry 33. */
  if (n_kv > left(&ps) / 14)
    return fail(&ps, 16, "metadata count %llu cannot fit in the %llu bytes left (each entry takes at least 14)",
                (unsigned long long)n_kv, (unsigned long long)left(&ps));
  if (n_tensors > left(&ps) / 33)
    return fail(&ps, 8, "tensor count %llu cannot fit in the %llu bytes left (each entry takes at least 33)",
                (unsigned long long)n_tensors, (unsigned long long)left(&ps));
  rc = parse_kvs(&ps, n_kv);
  if (!rc) rc = parse_tensors(&ps, n_tensors);
  return rc;
}

/* ---- open and close ------------------------------------------------------------------------------ */

static int open_common(qmoe_gguf *f, qmoe_gguf **out) {
  int rc = parse_file(f);
  if (rc) {
    qmoe_gguf_close(f);
    return rc;
  }
  *out = f;
  return 0;
}

int qmoe_gguf_open(const char *path, qmoe_gguf **out) {
  *out = NULL;
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    qmoe_set_error("%s: cannot open: %s", path, strerror(errno));
    return QMOE_EIO;
  }
  struct stat st;
  if (fstat(fd, &st) != 0) {
    qmoe_set_error("%s: cannot stat: %s", path, strerror(errno));
    close(fd);
    return QMOE_EIO;
  }
  if (!S_ISREG(st.st_mode)) {
    qmoe_set_error("%s: not a regular file", path);
    close(fd);
    return QMOE_EIO;
  }
  if (st.st_size == 0) {
    qmoe_set_error("%s: offset 0: file is empty (0 bytes): not a GGUF file", path);
    close(fd);
    return QMOE_EFORMAT;
  }
  if ((uint64_t)st.st_size > (uint64_t)SIZE_MAX) {
    qmoe_set_error("%s: %lld bytes do not fit in this process's address space", path, (long long)st.st_size);
    close(fd);
    return QMOE_EIO;
  }
  void *base = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
  int err = errno;
  close(fd);
  if (base == MAP_FAILED) {
    qmoe_set_error("%s: cannot map %lld bytes: %s", path, (long long)st.st_size, strerror(err));
    return QMOE_EIO;
  }
  qmoe_gguf *f = qmoe_gguf__xrealloc(NULL, sizeof *f);
  memset(f, 0, sizeof *f);
  f->path = qmoe_gguf__xstrndup(path, strlen(path));
  f->base = base;
  f->size = (uint64_t)st.st_size;
  f->mapped = 1;
  return open_common(f, out);
}

int qmoe_gguf_open_memory(const void *data, size_t size, const char *name, qmoe_gguf **out) {
  *out = NULL;
  if (!data && size) {
    qmoe_set_error("qmoe_gguf_open_memory: data is NULL");
    return QMOE_EINVAL;
  }
  if (!name) name = "<memory>";
  qmoe_gguf *f = qmoe_gguf__xrealloc(NULL, sizeof *f);
  memset(f, 0, sizeof *f);
  f->path = qmoe_gguf__xstrndup(name, strlen(name));
  f->base = data ? data : (const uint8_t *)"";
  f->size = size;
  return open_common(f, out);
}

void qmoe_gguf_close(qmoe_gguf *f) {
  if (!f) return;
  if (f->mapped) munmap((void *)f->base, (size_t)f->size);
  for (int64_t i = 0; i < f->n_kv; i++) free(f->kv[i].key);
  for (int64_t i = 0; i < f->n_tensors; i++) free((char *)f->tensors[i].name);
  free(f->kv);
  free(f->kv_sorted);
  free(f->tensors);
  free(f->tensors_sorted);
  free(f->path);
  free(f);
}

const char *qmoe_gguf_path(const qmoe_gguf *f) { return f->path; }
uint32_t qmoe_gguf_version(const qmoe_gguf *f) { return f->version; }
uint64_t qmoe_gguf_alignment(const qmoe_gguf *f) { return f->alignment; }
uint64_t qmoe_gguf_data_offset(const qmoe_gguf *f) { return f->data_offset; }
uint64_t qmoe_gguf_file_size(const qmoe_gguf *f) { return f->size; }

/* ---- metadata ------------------------------------------------------------------------------------ */

int64_t qmoe_gguf_kv_count(const qmoe_gguf *f) { return f->n_kv; }

const char *qmoe_gguf_kv_key(const qmoe_gguf *f, int64_t i) {
  return i >= 0 && i < f->n_kv ? f->kv[i].key : NULL;
}

const qmoe_gguf_value *qmoe_gguf_kv_value(const qmoe_gguf *f, int64_t i) {
  return i >= 0 && i < f->n_kv ? &f->kv[i].value : NULL;
}

static int64_t find_sorted(const qmoe_gguf__name_index *v, int64_t n, const char *name) {
  int64_t lo = 0, hi = n;
  while (lo < hi) {
    int64_t mid = lo + (hi - lo) / 2;
    int c = strcmp(v[mid].name, name);
    if (c == 0) return v[mid].index;
    if (c < 0) lo = mid + 1;
    else hi = mid;
  }
  return -1;
}

int64_t qmoe_gguf_find_key(const qmoe_gguf *f, const char *key) { return find_sorted(f->kv_sorted, f->n_kv, key); }

/* Conversions write a reason (without location) into why and return non-zero when the value does not fit. */
static int conv_u64(const qmoe_gguf_value *v, uint64_t *out, char *why, size_t cap) {
  const uint8_t *p = v->data;
  int64_t s;
  switch (v->type) {
  case QMOE_GGUF_U8: *out = p[0]; return 0;
  case QMOE_GGUF_U16: *out = gguf_ld16(p); return 0;
  case QMOE_GGUF_U32: *out = gguf_ld32(p); return 0;
  case QMOE_GGUF_U64: *out = gguf_ld64(p); return 0;
  case QMOE_GGUF_I8: s = (int8_t)p[0]; break;
  case QMOE_GGUF_I16: s = (int16_t)gguf_ld16(p); break;
  case QMOE_GGUF_I32: s = (int32_t)gguf_ld32(p); break;
  case QMOE_GGUF_I64: s = (int64_t)gguf_ld64(p); break;
  default:
    snprintf(why, cap, "is %s, expected an integer", qmoe_gguf_type_name_of_value(v->type));
    return -1;
  }
  if (s < 0) {
    snprintf(why, cap, "is %lld, expected a non-negative integer", (long long)s);
    return -1;
  }
  *out = (uint64_t)s;
  return 0;
}

static int conv_i64(const qmoe_gguf_value *v, int64_t *out, char *why, size_t cap) {
  const uint8_t *p = v->data;
  switch (v->type) {
  case QMOE_GGUF_I8: *out = (int8_t)p[0]; return 0;
  case QMOE_GGUF_I16: *out = (int16_t)gguf_ld16(p); return 0;
  case QMOE_GGUF_I32: *out = (int32_t)gguf_ld32(p); return 0;
  case QMOE_GGUF_I64: *out = (int64_t)gguf_ld64(p); return 0;
  default: break;
  }
  uint64_t u;
  if (conv_u64(v, &u, why, cap)) return -1;
  if (u > (uint64_t)INT64_MAX) {
    snprintf(why, cap, "is %llu, too large for a signed 64-bit integer", (unsigned long long)u);
    return -1;
  }
  *out = (int64_t)u;
  return 0;
}

static int conv_f64(const qmoe_gguf_value *v, double *out, char *why, size_t cap) {
  if (v->type == QMOE_GGUF_F32) {
    uint32_t b = gguf_ld32(v->data);
    float x;
    memcpy(&x, &b, 4);
    *out = x;
    return 0;
  }
  if (v->type == QMOE_GGUF_F64) {
    uint64_t b = gguf_ld64(v->data);
    memcpy(out, &b, 8);
    return 0;
  }
  snprintf(why, cap, "is %s, expected f32 or f64", qmoe_gguf_type_name_of_value(v->type));
  return -1;
}

static int value_error(const char *why, const qmoe_gguf_value *v) {
  qmoe_set_error("value at offset %llu %s", (unsigned long long)v->offset, why);
  return QMOE_EFORMAT;
}

int qmoe_gguf_value_u64(const qmoe_gguf_value *v, uint64_t *out) {
  char why[160];
  return conv_u64(v, out, why, sizeof why) ? value_error(why, v) : 0;
}

int qmoe_gguf_value_i64(const qmoe_gguf_value *v, int64_t *out) {
  char why[160];
  return conv_i64(v, out, why, sizeof why) ? value_error(why, v) : 0;
}

int qmoe_gguf_value_f64(const qmoe_gguf_value *v, double *out) {
  char why[160];
  return conv_f64(v, out, why, sizeof why) ? value_error(why, v) : 0;
}

/* The value of key, or NULL with the error set ("file: key 'x' is missing"). */
static const qmoe_gguf_value *get_value(const qmoe_gguf *f, const char *key) {
  int64_t i = qmoe_gguf_find_key(f, key);
  if (i < 0) {
    qmoe_set_error("%s: key '%s' is missing", f->path, key);
    return NULL;
  }
  return &f->kv[i].value;
}

static int key_error(const qmoe_gguf *f, const char *key, const char *why) {
  int64_t i = qmoe_gguf_find_key(f, key);
  qmoe_set_error("%s: offset %llu: key '%s' %s", f->path, (unsigned long long)(i >= 0 ? f->kv[i].offset : 0), key, why);
  return QMOE_EFORMAT;
}

int qmoe_gguf_get_u64(const qmoe_gguf *f, const char *key, uint64_t *out) {
  const qmoe_gguf_value *v = get_value(f, key);
  char why[160];
  if (!v) return QMOE_EFORMAT;
  return conv_u64(v, out, why, sizeof why) ? key_error(f, key, why) : 0;
}

int qmoe_gguf_get_u32(const qmoe_gguf *f, const char *key, uint32_t *out) {
  uint64_t u;
  int rc = qmoe_gguf_get_u64(f, key, &u);
  if (rc) return rc;
  if (u > UINT32_MAX) {
    char why[160];
    snprintf(why, sizeof why, "is %llu, too large for a u32", (unsigned long long)u);
    return key_error(f, key, why);
  }
  *out = (uint32_t)u;
  return 0;
}

int qmoe_gguf_get_i64(const qmoe_gguf *f, const char *key, int64_t *out) {
  const qmoe_gguf_value *v = get_value(f, key);
  char why[160];
  if (!v) return QMOE_EFORMAT;
  return conv_i64(v, out, why, sizeof why) ? key_error(f, key, why) : 0;
}

int qmoe_gguf_get_f64(const qmoe_gguf *f, const char *key, double *out) {
  const qmoe_gguf_value *v = get_value(f, key);
  char why[160];
  if (!v) return QMOE_EFORMAT;
  return conv_f64(v, out, why, sizeof why) ? key_error(f, key, why) : 0;
}

int qmoe_gguf_get_f32(const qmoe_gguf *f, const char *key, float *out) {
  const qmoe_gguf_value *v = get_value(f, key);
  if (!v) return QMOE_EFORMAT;
  if (v->type != QMOE_GGUF_F32) {
    char why[160];
    snprintf(why, sizeof why, "is %s, expected f32", qmoe_gguf_type_name_of_value(v->type));
    return key_error(f, key, why);
  }
  uint32_t b = gguf_ld32(v->data);
  memcpy(out, &b, 4);
  return 0;
}

int qmoe_gguf_get_bool(const qmoe_gguf *f, const char *key, int *out) {
  const qmoe_gguf_value *v = get_value(f, key);
  if (!v) return QMOE_EFORMAT;
  if (v->type != QMOE_GGUF_BOOL) {
    char why[160];
    snprintf(why, sizeof why, "is %s, expected bool", qmoe_gguf_type_name_of_value(v->type));
    return key_error(f, key, why);
  }
  *out = ((const uint8_t *)v->data)[0];
  return 0;
}

int qmoe_gguf_get_str(const qmoe_gguf *f, const char *key, const char **s, uint64_t *len) {
  const qmoe_gguf_value *v = get_value(f, key);
  if (!v) return QMOE_EFORMAT;
  if (v->type != QMOE_GGUF_STRING) {
    char why[160];
    snprintf(why, sizeof why, "is %s, expected string", qmoe_gguf_type_name_of_value(v->type));
    return key_error(f, key, why);
  }
  *s = v->data;
  *len = v->count;
  return 0;
}

int qmoe_gguf_get_array(const qmoe_gguf *f, const char *key, int elem_type, qmoe_gguf_value *out) {
  const qmoe_gguf_value *v = get_value(f, key);
  if (!v) return QMOE_EFORMAT;
  if (v->type != QMOE_GGUF_ARRAY || (elem_type >= 0 && v->elem_type != elem_type)) {
    char why[160];
    if (v->type != QMOE_GGUF_ARRAY)
      snprintf(why, sizeof why, "is %s, expected an array", qmoe_gguf_type_name_of_value(v->type));
    else
      snprintf(why, sizeof why, "is an array of %s, expected an array of %s", qmoe_gguf_type_name_of_value(v->elem_type),
               qmoe_gguf_type_name_of_value(elem_type));
    return key_error(f, key, why);
  }
  *out = *v;
  return 0;
}

/* ---- arrays -------------------------------------------------------------------------------------- */
/* Array values come from a validated file (or a writer's own well-formed bytes), so walking them needs
 * no further bounds checks: every length below was checked by parse_value. */

/* Encoded size of n elements of type et starting at p. */
static uint64_t elements_size(int et, const uint8_t *p, uint64_t n) {
  uint64_t esz = qmoe_gguf__scalar_size(et), pos = 0;
  if (esz) return n * esz;
  for (uint64_t i = 0; i < n; i++) {
    if (et == QMOE_GGUF_STRING) {
      pos += 8 + gguf_ld64(p + pos);
    } else { /* array */
      int inner = (int)gguf_ld32(p + pos);
      uint64_t cnt = gguf_ld64(p + pos + 4);
      pos += 12 + elements_size(inner, p + pos + 12, cnt);
    }
  }
  return pos;
}

/* Decodes the element at p (type et); returns its encoded size. */
static uint64_t decode_element(int et, const uint8_t *p, uint64_t offset, qmoe_gguf_value *out) {
  memset(out, 0, sizeof *out);
  out->type = et;
  out->elem_type = -1;
  uint64_t esz = qmoe_gguf__scalar_size(et);
  if (esz) {
    out->count = 1, out->data = p, out->size = esz, out->offset = offset;
    return esz;
  }
  if (et == QMOE_GGUF_STRING) {
    uint64_t len = gguf_ld64(p);
    out->count = len, out->data = p + 8, out->size = len, out->offset = offset + 8;
    return 8 + len;
  }
  out->elem_type = (int)gguf_ld32(p);
  out->count = gguf_ld64(p + 4);
  out->data = p + 12;
  out->offset = offset + 12;
  out->size = elements_size(out->elem_type, p + 12, out->count);
  return 12 + out->size;
}

void qmoe_gguf_iter_init(qmoe_gguf_iter *it, const qmoe_gguf_value *arr) {
  it->arr = *arr;
  it->index = 0;
  it->pos = 0;
}

int qmoe_gguf_iter_next(qmoe_gguf_iter *it, qmoe_gguf_value *elem) {
  if (it->arr.type != QMOE_GGUF_ARRAY || it->index >= it->arr.count) return 0;
  it->pos += decode_element(it->arr.elem_type, (const uint8_t *)it->arr.data + it->pos, it->arr.offset + it->pos, elem);
  it->index++;
  return 1;
}

int qmoe_gguf_array_get(const qmoe_gguf_value *arr, uint64_t i, qmoe_gguf_value *out) {
  if (arr->type != QMOE_GGUF_ARRAY) {
    qmoe_set_error("value at offset %llu is %s, not an array", (unsigned long long)arr->offset,
                   qmoe_gguf_type_name_of_value(arr->type));
    return QMOE_EINVAL;
  }
  if (i >= arr->count) {
    qmoe_set_error("array at offset %llu has %llu elements; index %llu is out of range", (unsigned long long)arr->offset,
                   (unsigned long long)arr->count, (unsigned long long)i);
    return QMOE_EINVAL;
  }
  uint64_t esz = qmoe_gguf__scalar_size(arr->elem_type);
  if (esz) {
    decode_element(arr->elem_type, (const uint8_t *)arr->data + i * esz, arr->offset + i * esz, out);
    return 0;
  }
  qmoe_gguf_iter it;
  qmoe_gguf_iter_init(&it, arr);
  while (qmoe_gguf_iter_next(&it, out))
    if (it.index == i + 1) return 0;
  return QMOE_EINVAL; /* not reached: i < count */
}

int qmoe_gguf_array_prefix(const qmoe_gguf_value *arr, uint64_t n, qmoe_gguf_value *out) {
  if (arr->type != QMOE_GGUF_ARRAY || n > arr->count) {
    qmoe_set_error("value at offset %llu: cannot take %llu elements of %s with %llu", (unsigned long long)arr->offset,
                   (unsigned long long)n, qmoe_gguf_type_name_of_value(arr->type), (unsigned long long)arr->count);
    return QMOE_EINVAL;
  }
  *out = *arr;
  out->count = n;
  out->size = elements_size(arr->elem_type, arr->data, n);
  return 0;
}

/* ---- tensors ------------------------------------------------------------------------------------- */

int64_t qmoe_gguf_tensor_count(const qmoe_gguf *f) { return f->n_tensors; }

const qmoe_gguf_tensor *qmoe_gguf_tensor_at(const qmoe_gguf *f, int64_t i) {
  return i >= 0 && i < f->n_tensors ? &f->tensors[i] : NULL;
}

const qmoe_gguf_tensor *qmoe_gguf_find_tensor(const qmoe_gguf *f, const char *name) {
  int64_t i = find_sorted(f->tensors_sorted, f->n_tensors, name);
  return i >= 0 ? &f->tensors[i] : NULL;
}
