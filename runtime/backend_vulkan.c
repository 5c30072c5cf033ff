/* backend_vulkan.c: the "vulkan" backend — backend.h over the Vulkan runtime (vk.c). Each stage call looks up
 * its (stage, qtype, acc) variant in the generated table (generated/c/vk_variants.c) — a missing one is
 * QMOE_EUNSUPPORTED naming the stage, tensor and qtype, never a fallback — and records its dispatches; sync()
 * submits everything recorded since the last sync. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "backend.h"
#include "qmoe.h"
#include "ref_internal.h"
#include "stage_table.h"
#include "vk_internal.h"

struct qmoe_buffer {
  qmoe_vk_buf b;
  qmoe_buffer *prev, *next; /* the backend's live buffers, freed at close if the caller did not */
};

typedef struct {
  qmoe_vk *vk;
  qmoe_buffer *live;
  qmoe_vk_buf scratch;  /* router logits, attention partial results, argmax partial results */
  uint32_t max_groups;  /* QMOE_VK_MAX_GROUPS (tests): fewer workgroups, so the kernels' strided loops run */
} vk_backend;

/* The push constants every shader declares (codegen/gen_glsl.lua's PUSH): 128 bytes. */
typedef struct {
  uint32_t p[8];     /* the stage's int params, contract order */
  uint32_t o[8];     /* byte offset of each binding's data from its (aligned) bound offset */
  float ff[4];       /* float params as f32 */
  uint32_t fd[4][2]; /* float params as f64: low word, high word (GLSL packDouble2x32) */
  uint32_t x[4];     /* per-dispatch extras of the stage */
} vk_push;
_Static_assert(sizeof(vk_push) == QMOE_VK_PUSH_BYTES, "push constants are 128 bytes");

static vk_backend *impl(qmoe_backend *be) { return be->impl; }

static const char *acc_name(int acc) { return acc == QMOE_ACC_F64 ? "f64" : acc == QMOE_ACC_F32 ? "f32" : "?"; }

/* ---- buffers ---- */

static int vkb_alloc(qmoe_backend *be, size_t bytes, qmoe_buffer **out) {
  *out = NULL;
  qmoe_buffer *b = calloc(1, sizeof *b);
  if (!b) {
    qmoe_set_error("vulkan backend: out of host memory");
    return QMOE_EINVAL;
  }
  vk_backend *vb = impl(be);
  int rc = qmoe_vk_buf_create(vb->vk, bytes, &b->b);
  if (rc) {
    free(b);
    return rc;
  }
  b->next = vb->live;
  if (vb->live) vb->live->prev = b;
  vb->live = b;
  *out = b;
  return 0;
}

static void vkb_free_buf(qmoe_backend *be, qmoe_buffer *b) {
  if (!b) return;
  vk_backend *vb = impl(be);
  if (b->prev) b->prev->next = b->next;
  else vb->live = b->next;
  if (b->next) b->next->prev = b->prev;
  qmoe_vk_buf_destroy(vb->vk, &b->b);
  free(b);
}

static int vkb_upload(qmoe_backend *be, qmoe_buffer *b, size_t off, const void *src, size_t n) {
  if (!b) {
    qmoe_set_error("vulkan upload: buffer is NULL");
    return QMOE_EINVAL;
  }
  return qmoe_vk_buf_write(impl(be)->vk, &b->b, off, src, n);
}

static int vkb_download(qmoe_backend *be, qmoe_buffer *b, size_t off, void *dst, size_t n) {
  if (!b) {
    qmoe_set_error("vulkan download: buffer is NULL");
    return QMOE_EINVAL;
  }
  return qmoe_vk_buf_read(impl(be)->vk, &b->b, off, dst, n);
}

static int ensure_scratch(vk_backend *vb, size_t bytes) {
  if (vb->scratch.buf && vb->scratch.size >= bytes) return 0;
  size_t want = vb->scratch.size * 2 > bytes ? vb->scratch.size * 2 : bytes;
  qmoe_vk_buf_destroy(vb->vk, &vb->scratch); /* waits for recorded work that uses it */
  return qmoe_vk_buf_create(vb->vk, want < 4096 ? 4096 : want, &vb->scratch);
}

/* ---- variant lookup ---- */

static int lookup(const qmoe_stage_call *c, const qmoe_stage_info *si, const qmoe_vk_variant **out) {
  *out = NULL;
  for (size_t i = 0; i < qmoe_vk_variant_count; i++) {
    const qmoe_vk_variant *v = &qmoe_vk_variants[i];
    if (v->stage == (int)c->stage && v->qtype == (si->varies_by_qtype ? c->qtype : -1) &&
        (v->acc == -1 || v->acc == (int)c->acc)) {
      *out = v;
      return 0;
    }
  }
  char list[512] = "";
  size_t len = 0;
  for (size_t i = 0; i < qmoe_vk_variant_count && len < sizeof list; i++) {
    const qmoe_vk_variant *v = &qmoe_vk_variants[i];
    if (v->stage == (int)c->stage)
      len += (size_t)snprintf(list + len, sizeof list - len, "%s%s", len ? ", " : "",
                              v->what + strlen(si->name) + (v->what[strlen(si->name)] == '/'));
  }
  if (si->varies_by_qtype)
    qmoe_set_error("vulkan: stage %s has no variant for tensor '%s' of qtype %s with %s accumulators "
                   "(Vulkan variants: %s)",
                   si->name, c->tensor ? c->tensor : si->buf_names[0], qmoe_qtype_name(c->qtype),
                   acc_name(c->acc), list[0] ? list : "none");
  else
    qmoe_set_error("vulkan: stage %s has no variant with %s accumulators (Vulkan variants: %s)", si->name,
                   acc_name(c->acc), list[0] ? list : "none");
  return QMOE_EUNSUPPORTED;
}

/* ---- one stage call ---- */

static uint32_t cdiv(uint64_t a, uint64_t b) { return (uint32_t)((a + b - 1) / b); }

/* Workgroups for a kernel that strides over its work: at most the device's limit (or QMOE_VK_MAX_GROUPS). */
static uint32_t cap(const vk_backend *vb, uint32_t groups, int dim) {
  uint32_t m = qmoe_vk_limits(vb->vk)->maxComputeWorkGroupCount[dim];
  if (vb->max_groups && vb->max_groups < m) m = vb->max_groups;
  return groups > m ? m : groups < 1 ? 1 : groups;
}

static int vkb_run(qmoe_backend *be, const qmoe_stage_call *c) {
  vk_backend *vb = impl(be);
  qmoe_vk *vk = vb->vk;
  if (!c) {
    qmoe_set_error("vulkan run: call is NULL");
    return QMOE_EINVAL;
  }
  const qmoe_stage_info *si = (unsigned)c->stage < QMOE_STAGE_COUNT ? qmoe_stage_info_get(c->stage) : NULL;
  if (!si) {
    qmoe_set_error("vulkan run: unknown stage id %d", (int)c->stage);
    return QMOE_EINVAL;
  }
  if (c->acc != QMOE_ACC_F32 && c->acc != QMOE_ACC_F64) {
    qmoe_set_error("vulkan: stage %s: unknown accumulator %d", si->name, (int)c->acc);
    return QMOE_EINVAL;
  }
  const qmoe_vk_variant *v;
  int rc = lookup(c, si, &v);
  if (rc) return rc;
  size_t need[QMOE_STAGE_MAX_BUFS];
  if ((rc = qmoe_stage_check(c, need))) return rc; /* params, qtype and the bytes each buffer needs */

  const int nbuf = si->n_inputs + si->n_outputs;
  const VkDeviceSize align = qmoe_vk_offset_align(vk);
  const VkDeviceSize max_range = qmoe_vk_limits(vk)->maxStorageBufferRange & ~(VkDeviceSize)15;
  qmoe_vk_binding bind[QMOE_VK_MAX_BINDINGS];
  vk_push pc;
  memset(&pc, 0, sizeof pc);
  for (int i = 0; i < nbuf; i++) {
    const char *bname = si->buf_names[i];
    const char *tname = (i == 0 && c->tensor) ? c->tensor : bname;
    if (!c->buf[i]) {
      qmoe_set_error("vulkan: stage %s: buffer %d (%s) is NULL", si->name, i, bname);
      return QMOE_EINVAL;
    }
    const qmoe_vk_buf *b = &c->buf[i]->b;
    if (c->off[i] > b->size || need[i] > b->size - c->off[i]) {
      qmoe_set_error("vulkan: stage %s: buffer %d (%s, tensor '%s') holds %llu bytes from offset %zu, the call "
                     "needs %zu", si->name, i, bname, tname,
                     (unsigned long long)(c->off[i] > b->size ? 0 : b->size - c->off[i]), c->off[i], need[i]);
      return QMOE_EINVAL;
    }
    VkDeviceSize base = c->off[i] & ~(align - 1), rem = c->off[i] - base;
    if (si->bufs[i].dtype != QMOE_DTYPE_QTYPE && rem % 4) {
      qmoe_set_error("vulkan: stage %s: buffer %d (%s) offset %zu is not a multiple of 4", si->name, i, bname,
                     c->off[i]);
      return QMOE_EINVAL;
    }
    if (rem + need[i] > max_range) {
      qmoe_set_error("vulkan: stage %s: tensor '%s' needs %llu bytes bound at once, device '%s' allows "
                     "maxStorageBufferRange = %llu",
                     si->name, tname, (unsigned long long)(rem + need[i]), qmoe_vk_device_name(vk),
                     (unsigned long long)max_range);
      return QMOE_EUNSUPPORTED;
    }
    bind[i] = (qmoe_vk_binding){.buf = b, .off = base, .writes = i >= si->n_inputs};
    pc.o[i] = (uint32_t)rem;
  }
  for (int i = 0; i < si->n_params; i++) pc.p[i] = (uint32_t)c->p[i]; /* qmoe_stage_check: 0..INT32_MAX */
  for (int i = 0; i < si->n_fparams && i < 4; i++) {
    double d = c->f[i];
    uint64_t bits;
    memcpy(&bits, &d, sizeof bits);
    pc.ff[i] = (float)d;
    pc.fd[i][0] = (uint32_t)bits;
    pc.fd[i][1] = (uint32_t)(bits >> 32);
  }

  VkPipeline pipe[QMOE_VK_MAX_PASSES];
  for (int i = 0; i < v->npass; i++) {
    char what[160];
    if (v->npass > 1)
      snprintf(what, sizeof what, "%s (pass %s)", v->what, strchr(v->pass[i].shader, '.') + 1);
    else
      snprintf(what, sizeof what, "%s", v->what);
    if ((rc = qmoe_vk_pipeline(vk, v->pass[i].shader, what, v->pass[i].shared_bytes, v->pass[i].local_size,
                               &pipe[i])))
      return rc;
  }

  const int64_t *p = c->p;
  const uint32_t wg0 = v->pass[0].local_size;
  int nb = nbuf;
  switch (c->stage) {
  case QMOE_STAGE_MATVEC: /* rows, cols */
    return qmoe_vk_dispatch(vk, pipe[0], bind, nb, &pc, sizeof pc, cap(vb, cdiv((uint64_t)p[0], v->rows), 0), 1, 1);
  case QMOE_STAGE_MOE_GATE_UP_SWIGLU: /* H, F, E, K: grid.y = k */
    if ((uint64_t)p[3] > qmoe_vk_limits(vk)->maxComputeWorkGroupCount[1]) {
      qmoe_set_error("vulkan: moe_gate_up_swiglu: K = %lld exceeds the device's maxComputeWorkGroupCount[1]",
                     (long long)p[3]);
      return QMOE_EUNSUPPORTED;
    }
    return qmoe_vk_dispatch(vk, pipe[0], bind, nb, &pc, sizeof pc, cap(vb, cdiv((uint64_t)p[1], v->rows), 0),
                            (uint32_t)p[3], 1);
  case QMOE_STAGE_MOE_DOWN: /* H, F, E, K */
    return qmoe_vk_dispatch(vk, pipe[0], bind, nb, &pc, sizeof pc, cap(vb, cdiv((uint64_t)p[0], v->rows), 0), 1, 1);
  case QMOE_STAGE_ROUTER_TOPK: { /* H, E, K: logits into scratch, then one workgroup selects */
    size_t acc_b = c->acc == QMOE_ACC_F64 ? 8 : 4;
    if ((rc = ensure_scratch(vb, (size_t)p[1] * acc_b))) return rc;
    bind[nb++] = (qmoe_vk_binding){.buf = &vb->scratch, .off = 0, .writes = 1};
    if ((rc = qmoe_vk_dispatch(vk, pipe[0], bind, nb, &pc, sizeof pc, cap(vb, (uint32_t)p[1], 0), 1, 1))) return rc;
    return qmoe_vk_dispatch(vk, pipe[1], bind, nb, &pc, sizeof pc, 1, 1, 1);
  }
  case QMOE_STAGE_RMSNORM:
    return qmoe_vk_dispatch(vk, pipe[0], bind, nb, &pc, sizeof pc, 1, 1, 1);
  case QMOE_STAGE_QK_NORM: /* nh, D: one workgroup per head */
    if ((uint64_t)p[0] > qmoe_vk_limits(vk)->maxComputeWorkGroupCount[0]) {
      qmoe_set_error("vulkan: qk_norm: nh = %lld exceeds the device's maxComputeWorkGroupCount[0]", (long long)p[0]);
      return QMOE_EUNSUPPORTED;
    }
    return qmoe_vk_dispatch(vk, pipe[0], bind, nb, &pc, sizeof pc, (uint32_t)p[0], 1, 1);
  case QMOE_STAGE_ROPE_NEOX: /* nh, D, pos */
    return qmoe_vk_dispatch(vk, pipe[0], bind, nb, &pc, sizeof pc,
                            cap(vb, cdiv((uint64_t)p[0] * (uint64_t)(p[1] / 2), wg0), 0), 1, 1);
  case QMOE_STAGE_KV_STORE: /* nkv, D, pos, ctx */
    return qmoe_vk_dispatch(vk, pipe[0], bind, nb, &pc, sizeof pc, cap(vb, cdiv((uint64_t)p[0] * (uint64_t)p[1], wg0), 0),
                            1, 1);
  case QMOE_STAGE_ATTENTION: { /* nh, nkv, D, n_kv, ctx: (kv head, block of v->rows query heads, split of wg0
                                 * positions), then one combine per head */
    const VkPhysicalDeviceLimits *L = qmoe_vk_limits(vk);
    uint32_t ns = cdiv((uint64_t)p[3], wg0);
    uint32_t gx = (uint32_t)p[1] * cdiv((uint64_t)(p[0] / p[1]), v->rows);
    if ((uint64_t)p[0] > L->maxComputeWorkGroupCount[0] || ns > L->maxComputeWorkGroupCount[1]) {
      qmoe_set_error("vulkan: attention: nh = %lld heads x %u splits exceed the device's maxComputeWorkGroupCount",
                     (long long)p[0], ns);
      return QMOE_EUNSUPPORTED;
    }
    size_t acc_b = c->acc == QMOE_ACC_F64 ? 8 : 4;
    if ((rc = ensure_scratch(vb, (size_t)p[0] * ns * (size_t)(p[2] + 2) * acc_b))) return rc;
    bind[nb++] = (qmoe_vk_binding){.buf = &vb->scratch, .off = 0, .writes = 1};
    pc.x[0] = ns;
    if ((rc = qmoe_vk_dispatch(vk, pipe[0], bind, nb, &pc, sizeof pc, gx, ns, 1))) return rc;
    return qmoe_vk_dispatch(vk, pipe[1], bind, nb, &pc, sizeof pc, (uint32_t)p[0], 1, 1);
  }
  case QMOE_STAGE_ADD: /* n */
    return qmoe_vk_dispatch(vk, pipe[0], bind, nb, &pc, sizeof pc, cap(vb, cdiv((uint64_t)p[0], wg0), 0), 1, 1);
  case QMOE_STAGE_ARGMAX: { /* n: chunks reduced to (value, index) pairs, then one workgroup */
    uint64_t n = (uint64_t)p[0], maxg = cap(vb, UINT32_MAX, 0);
    uint64_t chunk = (uint64_t)wg0 * 16;
    if (cdiv(n, chunk) > maxg) chunk = ((n + maxg - 1) / maxg + wg0 - 1) / wg0 * wg0;
    uint32_t ng = cdiv(n, chunk);
    if ((rc = ensure_scratch(vb, (size_t)ng * 8))) return rc;
    bind[nb++] = (qmoe_vk_binding){.buf = &vb->scratch, .off = 0, .writes = 1};
    pc.x[0] = (uint32_t)chunk;
    pc.x[1] = ng;
    if ((rc = qmoe_vk_dispatch(vk, pipe[0], bind, nb, &pc, sizeof pc, ng, 1, 1))) return rc;
    return qmoe_vk_dispatch(vk, pipe[1], bind, nb, &pc, sizeof pc, 1, 1, 1);
  }
  default:
    qmoe_set_error("vulkan: stage %s has no dispatch rule in runtime/backend_vulkan.c", si->name);
    return QMOE_EUNSUPPORTED;
  }
}

static int vkb_sync(qmoe_backend *be) { return qmoe_vk_sync(impl(be)->vk); }

qmoe_vk *qmoe_backend_vulkan_vk(qmoe_backend *be) {
  return be && be->run == vkb_run ? impl(be)->vk : NULL;
}

static void vkb_close(qmoe_backend *be) {
  if (!be) return;
  vk_backend *vb = impl(be);
  if (vb) {
    if (vb->vk) {
      while (vb->live) vkb_free_buf(be, vb->live);
      qmoe_vk_buf_destroy(vb->vk, &vb->scratch);
      qmoe_vk_close(vb->vk);
    }
    free(vb);
  }
  free(be);
}

int qmoe_backend_vulkan_open(qmoe_backend **out) {
  if (!out) {
    qmoe_set_error("qmoe_backend_vulkan_open: out is NULL");
    return QMOE_EINVAL;
  }
  *out = NULL;
  qmoe_backend *be = calloc(1, sizeof *be);
  vk_backend *vb = calloc(1, sizeof *vb);
  if (!be || !vb) {
    free(be);
    free(vb);
    qmoe_set_error("vulkan backend: out of host memory");
    return QMOE_EINVAL;
  }
  int rc = qmoe_vk_open(&vb->vk);
  if (rc) {
    free(be);
    free(vb);
    return rc;
  }
  const char *mg = getenv("QMOE_VK_MAX_GROUPS");
  vb->max_groups = mg ? (uint32_t)strtoul(mg, NULL, 10) : 0;
  be->name = "vulkan";
  be->alloc = vkb_alloc;
  be->free_buf = vkb_free_buf;
  be->upload = vkb_upload;
  be->download = vkb_download;
  be->run = vkb_run;
  be->sync = vkb_sync;
  be->close = vkb_close;
  be->impl = vb;
  *out = be;
  return 0;
}
