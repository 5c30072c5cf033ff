/* backend_cpu.c: the "cpu" backend — backend.h over host memory; every stage runs the CPU reference
 * (ref_stages.c) with the call's accumulator. */
#include <stdlib.h>
#include <string.h>
#include "backend.h"
#include "qmoe.h"
#include "ref_internal.h"
#include "stage_table.h"

struct qmoe_buffer {
  size_t size;
  unsigned char *data;
};

static int cpu_alloc(qmoe_backend *be, size_t bytes, qmoe_buffer **out) {
  *out = NULL;
  qmoe_buffer *b = qmoe_alloc(sizeof *b, "cpu backend");
  unsigned char *data = b ? qmoe_alloc(bytes, "cpu backend: buffer") : NULL;
  if (!data) {
    free(b);
    return QMOE_ENOMEM;
  }
  b->size = bytes;
  b->data = data;
  *out = b;
  return 0;
}

static void cpu_free_buf(qmoe_backend *be, qmoe_buffer *b) {
  if (!b) return;
  free(b->data);
  free(b);
}

/* OFF + N must lie within the buffer (written so that it cannot overflow). */
static int in_bounds(const char *what, const qmoe_buffer *b, size_t off, size_t n) {
  if (!b) {
    qmoe_set_error("cpu backend: %s: buffer is NULL", what);
    return QMOE_EINVAL;
  }
  if (off > b->size || n > b->size - off) {
    qmoe_set_error("cpu backend: %s of %zu bytes at offset %zu is outside the buffer of %zu bytes", what, n, off,
                   b->size);
    return QMOE_EINVAL;
  }
  return 0;
}

static int cpu_upload(qmoe_backend *be, qmoe_buffer *b, size_t off, const void *src, size_t n) {
  int rc = in_bounds("upload", b, off, n);
  if (rc) return rc;
  if (n) memcpy(b->data + off, src, n);
  return 0;
}

static int cpu_download(qmoe_backend *be, qmoe_buffer *b, size_t off, void *dst, size_t n) {
  int rc = in_bounds("download", b, off, n);
  if (rc) return rc;
  if (n) memcpy(dst, b->data + off, n);
  return 0;
}

static int cpu_run(qmoe_backend *be, const qmoe_stage_call *c) {
  const qmoe_stage_info *si = (unsigned)c->stage < QMOE_STAGE_COUNT ? qmoe_stage_info_get(c->stage) : NULL;
  if (!si) {
    qmoe_set_error("cpu backend: unknown stage id %d (valid: 0..%d)", (int)c->stage, QMOE_STAGE_COUNT - 1);
    return QMOE_EINVAL;
  }
  void *ptr[QMOE_STAGE_MAX_BUFS] = {0};
  size_t size[QMOE_STAGE_MAX_BUFS] = {0};
  for (int i = 0; i < si->n_inputs + si->n_outputs; i++) {
    const qmoe_buffer *b = c->buf[i];
    if (!b) {
      qmoe_set_error("cpu backend: stage %s: buffer %d (%s) is NULL", si->name, i, si->buf_names[i]);
      return QMOE_EINVAL;
    }
    if (c->off[i] > b->size) {
      qmoe_set_error("cpu backend: stage %s: offset %zu of buffer %d (%s) is past its end (%zu bytes)", si->name,
                     c->off[i], i, si->buf_names[i], b->size);
      return QMOE_EINVAL;
    }
    ptr[i] = b->data + c->off[i];
    size[i] = b->size - c->off[i];
  }
  return qmoe_ref_run(c, qmoe_ref_prec_of(c->acc), ptr, size);
}

static int cpu_sync(qmoe_backend *be) { return 0; }

static void cpu_close(qmoe_backend *be) { free(be); }

int qmoe_backend_cpu_open(qmoe_backend **out) {
  *out = NULL;
  qmoe_backend *be = qmoe_alloc(sizeof *be, "cpu backend");
  if (!be) return QMOE_ENOMEM;
  be->name = "cpu";
  be->alloc = cpu_alloc;
  be->free_buf = cpu_free_buf;
  be->upload = cpu_upload;
  be->download = cpu_download;
  be->run = cpu_run;
  be->sync = cpu_sync;
  be->close = cpu_close;
  *out = be;
  return 0;
}
