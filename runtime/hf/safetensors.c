/* safetensors.c: opens a .safetensors file read-only (mmap) and validates its header against the file:
 * every tensor's dtype, shape and byte range is checked before anyone reads a byte of data. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include "qmoe.h"

enum { ST_MAX_HEADER = 100 << 20 }; /* the safetensors format's own limit on the header */

struct qmoe_safetensors {
  char *path;
  const uint8_t *base;
  uint64_t size, data_start;
  qmoe_json *header;
  int64_t n;
  qmoe_st_tensor *t;
  int64_t *sorted; /* indices into t sorted by name */
};

static const struct { const char *name; int dtype, size; } dtypes[] = {
  { "F64", QMOE_ST_F64, 8 }, { "F32", QMOE_ST_F32, 4 }, { "F16", QMOE_ST_F16, 2 }, { "BF16", QMOE_ST_BF16, 2 },
  { "I64", QMOE_ST_I64, 8 }, { "I32", QMOE_ST_I32, 4 }, { "I16", QMOE_ST_I16, 2 }, { "I8", QMOE_ST_I8, 1 },
  { "U64", QMOE_ST_U64, 8 }, { "U32", QMOE_ST_U32, 4 }, { "U16", QMOE_ST_U16, 2 }, { "U8", QMOE_ST_U8, 1 },
  { "BOOL", QMOE_ST_BOOL, 1 }, { "F8_E4M3", QMOE_ST_F8_E4M3, 1 }, { "F8_E5M2", QMOE_ST_F8_E5M2, 1 },
};

static _Thread_local const qmoe_safetensors *sort_ctx; /* qsort has no context argument */
static int cmp_name(const void *a, const void *b) {
  return strcmp(sort_ctx->t[*(const int64_t *)a].name, sort_ctx->t[*(const int64_t *)b].name);
}
static int cmp_offset(const void *a, const void *b) {
  const qmoe_st_tensor *x = &sort_ctx->t[*(const int64_t *)a], *y = &sort_ctx->t[*(const int64_t *)b];
  return x->file_offset < y->file_offset ? -1 : x->file_offset > y->file_offset;
}

void qmoe_safetensors_close(qmoe_safetensors *f) {
  if (!f) return;
  if (f->base) munmap((void *)f->base, f->size);
  qmoe_json_free(f->header);
  free(f->t);
  free(f->sorted);
  free(f->path);
  free(f);
}

/* Reads one tensor entry (the member e of the header object) into t. */
static int read_entry(qmoe_safetensors *f, const qmoe_json *e, qmoe_st_tensor *t) {
  const char *p = f->path;
  if (e->type != QMOE_JSON_OBJECT) {
    qmoe_set_error("%s: header line %d:%d: tensor '%s' is %s, expected an object {dtype, shape, data_offsets}", p, e->line,
                   e->col, e->key, qmoe_json_type_name(e->type));
    return QMOE_EFORMAT;
  }
  t->name = e->key;
  if (strlen(e->key) != e->key_len || e->key_len == 0) {
    qmoe_set_error("%s: header line %d:%d: a tensor name is empty or holds a NUL byte", p, e->line, e->col);
    return QMOE_EFORMAT;
  }
  for (size_t i = 0; i < e->count; i++) {
    const char *k = e->items[i].key;
    if (strcmp(k, "dtype") && strcmp(k, "shape") && strcmp(k, "data_offsets")) {
      qmoe_set_error("%s: header line %d:%d: tensor '%s' has an unknown key \"%s\" (expected dtype, shape, data_offsets)", p,
                     e->items[i].line, e->items[i].col, t->name, k);
      return QMOE_EFORMAT;
    }
  }
  const qmoe_json *dt = qmoe_json_get(e, "dtype"), *sh = qmoe_json_get(e, "shape"), *off = qmoe_json_get(e, "data_offsets");
  if (!dt || !sh || !off) {
    qmoe_set_error("%s: header line %d:%d: tensor '%s' lacks \"%s\"", p, e->line, e->col, t->name,
                   !dt ? "dtype" : !sh ? "shape" : "data_offsets");
    return QMOE_EFORMAT;
  }
  int size = 0;
  if (dt->type == QMOE_JSON_STRING)
    for (size_t i = 0; i < sizeof dtypes / sizeof dtypes[0]; i++)
      if (!strcmp(dt->string, dtypes[i].name)) t->dtype = dtypes[i].dtype, t->dtype_name = dtypes[i].name, size = dtypes[i].size;
  if (!size) {
    qmoe_set_error("%s: header line %d:%d: tensor '%s' has an unknown dtype %s%s%s (known: F64 F32 F16 BF16 I64 I32 I16 I8 "
                   "U64 U32 U16 U8 BOOL F8_E4M3 F8_E5M2)", p, dt->line, dt->col, t->name,
                   dt->type == QMOE_JSON_STRING ? "'" : "", dt->type == QMOE_JSON_STRING ? dt->string : qmoe_json_type_name(dt->type),
                   dt->type == QMOE_JSON_STRING ? "'" : "");
    return QMOE_EFORMAT;
  }
  if (sh->type != QMOE_JSON_ARRAY || sh->count > 8) {
    qmoe_set_error("%s: header line %d:%d: tensor '%s' shape must be an array of at most 8 sizes", p, sh->line, sh->col, t->name);
    return QMOE_EFORMAT;
  }
  t->n_dims = (int)sh->count;
  int64_t n = 1;
  for (size_t i = 0; i < sh->count; i++) {
    const qmoe_json *d = &sh->items[i];
    if (d->type != QMOE_JSON_NUMBER || !d->is_integer || d->integer < 0 ||
        __builtin_mul_overflow(n, d->integer, &n) || n > (int64_t)1 << 56) {
      qmoe_set_error("%s: header line %d:%d: tensor '%s' shape[%zu] is not a size (a non-negative integer, the product small "
                     "enough to address)", p, d->line, d->col, t->name, i);
      return QMOE_EFORMAT;
    }
    t->shape[i] = d->integer;
  }
  t->n_elements = n;
  if (off->type != QMOE_JSON_ARRAY || off->count != 2 || off->items[0].type != QMOE_JSON_NUMBER ||
      off->items[1].type != QMOE_JSON_NUMBER || !off->items[0].is_integer || !off->items[1].is_integer ||
      off->items[0].integer < 0 || off->items[1].integer < off->items[0].integer) {
    qmoe_set_error("%s: header line %d:%d: tensor '%s' data_offsets must be [begin, end] with 0 <= begin <= end", p, off->line,
                   off->col, t->name);
    return QMOE_EFORMAT;
  }
  uint64_t b = (uint64_t)off->items[0].integer, en = (uint64_t)off->items[1].integer, data_size = f->size - f->data_start;
  t->nbytes = (uint64_t)n * (uint64_t)size;
  if (en - b != t->nbytes) {
    qmoe_set_error("%s: header line %d:%d: tensor '%s' data_offsets [%llu, %llu] span %llu bytes, but %s x %lld elements need %llu",
                   p, off->line, off->col, t->name, (unsigned long long)b, (unsigned long long)en,
                   (unsigned long long)(en - b), t->dtype_name, (long long)n, (unsigned long long)t->nbytes);
    return QMOE_EFORMAT;
  }
  if (en > data_size) {
    qmoe_set_error("%s: tensor '%s' data_offsets [%llu, %llu] run past the end of the data (%llu bytes after the header): "
                   "the file is truncated or the header is wrong", p, t->name, (unsigned long long)b, (unsigned long long)en,
                   (unsigned long long)data_size);
    return QMOE_EFORMAT;
  }
  t->file_offset = f->data_start + b;
  t->data = f->base + t->file_offset;
  return 0;
}

int qmoe_safetensors_open(const char *path, qmoe_safetensors **out) {
  *out = NULL;
  int fd = open(path, O_RDONLY);
  if (fd < 0) {
    qmoe_set_error("%s: cannot open: %s", path, strerror(errno));
    return QMOE_EIO;
  }
  struct stat st;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    close(fd);
    qmoe_set_error("%s: not a regular file", path);
    return QMOE_EIO;
  }
  qmoe_safetensors *f = calloc(1, sizeof *f);
  if (!f) abort();
  f->path = strdup(path);
  f->size = (uint64_t)st.st_size;
  int rc = QMOE_EFORMAT;
  if (f->size < 8) {
    qmoe_set_error("%s: %llu bytes: too short for a safetensors file (an 8-byte header length comes first)", path,
                   (unsigned long long)f->size);
    close(fd);
    goto fail;
  }
  void *m = mmap(NULL, f->size, PROT_READ, MAP_PRIVATE, fd, 0);
  close(fd);
  if (m == MAP_FAILED) {
    qmoe_set_error("%s: cannot map: %s", path, strerror(errno));
    rc = QMOE_EIO;
    goto fail;
  }
  f->base = m;
  uint64_t hlen = 0;
  for (int i = 0; i < 8; i++) hlen |= (uint64_t)f->base[i] << (8 * i);
  if (hlen > ST_MAX_HEADER || hlen > f->size - 8) {
    qmoe_set_error("%s: header length %llu %s (file of %llu bytes)", path, (unsigned long long)hlen,
                   hlen > ST_MAX_HEADER ? "exceeds the format's 100 MiB limit" : "runs past the end of the file",
                   (unsigned long long)f->size);
    goto fail;
  }
  f->data_start = 8 + hlen;
  char name[4096];
  snprintf(name, sizeof name, "%s (header)", path);
  /* The header may be padded with trailing spaces, which the JSON parser skips. */
  if ((rc = qmoe_json_parse(f->base + 8, (size_t)hlen, name, &f->header)) != 0) goto fail;
  rc = QMOE_EFORMAT;
  if (f->header->type != QMOE_JSON_OBJECT) {
    qmoe_set_error("%s: the header is %s, expected an object", path, qmoe_json_type_name(f->header->type));
    goto fail;
  }
  f->t = calloc(f->header->count ? f->header->count : 1, sizeof *f->t);
  f->sorted = calloc(f->header->count ? f->header->count : 1, sizeof *f->sorted);
  if (!f->t || !f->sorted) abort();
  for (size_t i = 0; i < f->header->count; i++) {
    const qmoe_json *e = &f->header->items[i];
    if (!strcmp(e->key, "__metadata__")) {
      if (e->type != QMOE_JSON_OBJECT) {
        qmoe_set_error("%s: header line %d:%d: __metadata__ must be an object of strings", path, e->line, e->col);
        goto fail;
      }
      continue;
    }
    if ((rc = read_entry(f, e, &f->t[f->n])) != 0) goto fail;
    f->sorted[f->n] = f->n;
    f->n++;
  }
  rc = QMOE_EFORMAT;
  /* No two tensors may share bytes (empty tensors share nothing). */
  sort_ctx = f;
  qsort(f->sorted, (size_t)f->n, sizeof *f->sorted, cmp_offset);
  for (int64_t i = 1; i < f->n; i++) {
    const qmoe_st_tensor *a = &f->t[f->sorted[i - 1]], *b = &f->t[f->sorted[i]];
    if (a->nbytes && b->nbytes && a->file_offset + a->nbytes > b->file_offset) {
      qmoe_set_error("%s: tensors '%s' and '%s' overlap in the data (bytes %llu..%llu and %llu..%llu): the header is wrong", path,
                     a->name, b->name, (unsigned long long)(a->file_offset - f->data_start),
                     (unsigned long long)(a->file_offset - f->data_start + a->nbytes),
                     (unsigned long long)(b->file_offset - f->data_start),
                     (unsigned long long)(b->file_offset - f->data_start + b->nbytes));
      goto fail;
    }
  }
  qsort(f->sorted, (size_t)f->n, sizeof *f->sorted, cmp_name);
  sort_ctx = NULL;
  *out = f;
  return 0;
fail:
  sort_ctx = NULL;
  qmoe_safetensors_close(f);
  return rc;
}

int64_t qmoe_safetensors_count(const qmoe_safetensors *f) { return f->n; }
const char *qmoe_safetensors_path(const qmoe_safetensors *f) { return f->path; }
const qmoe_st_tensor *qmoe_safetensors_at(const qmoe_safetensors *f, int64_t i) {
  return i >= 0 && i < f->n ? &f->t[i] : NULL;
}

const qmoe_st_tensor *qmoe_safetensors_find(const qmoe_safetensors *f, const char *name) {
  int64_t lo = 0, hi = f->n;
  while (lo < hi) {
    int64_t mid = lo + (hi - lo) / 2;
    int c = strcmp(f->t[f->sorted[mid]].name, name);
    if (c == 0) return &f->t[f->sorted[mid]];
    if (c < 0) lo = mid + 1;
    else hi = mid;
  }
  return NULL;
}
