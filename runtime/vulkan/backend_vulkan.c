/* backend_vulkan.c: the "vulkan" backend — backend.h over the Vulkan runtime (vk.c). Each stage call looks up
 * its (stage, qtype, acc) variant in the generated table (generated/c/vk_variants.c) — a missing one is
 * QMOE_EUNSUPPORTED naming the stage, tensor and qtype, never a fallback — and records its dispatches; sync()
 * submits everything recorded since the last sync. graph_begin/graph_end are the runtime's graphs (one
 * command buffer recorded once and replayed with new params). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "backend.h"
#include "qmoe.h"
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
  qmoe_vk_buf counters; /* COUNTERS u32, zero between calls: the last-workgroup passes' (codegen/gen_glsl.lua) */
  uint32_t max_groups;  /* QMOE_VK_MAX_GROUPS (tests): fewer workgroups, so the kernels' strided loops run */
} vk_backend;

/* The params every shader reads as `pc` (codegen/templates/glsl/_push.glsl): 128 bytes, the start of the
 * dispatch's slot in the runtime's params table. */
typedef struct {
  uint32_t p[8];     /* the stage's int params, contract order */
  uint32_t o[8];     /* byte offset of each binding's data from its (aligned) bound offset */
  float ff[4];       /* float params as f32 */
  uint32_t fd[4][2]; /* float params as f64: low word, high word (GLSL packDouble2x32) */
  uint32_t x[4];     /* per-dispatch extras of the stage */
} vk_push;
_Static_assert(sizeof(vk_push) == QMOE_VK_PUSH_BYTES, "params are 128 bytes");

static vk_backend *impl(qmoe_backend *be) { return be->impl; }


/* ---- buffers ---- */

static int vkb_alloc(qmoe_backend *be, size_t bytes, qmoe_buffer **out) {
  *out = NULL;
  qmoe_buffer *b = qmoe_alloc(sizeof *b, "vulkan backend");
  if (!b) return QMOE_ENOMEM;
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

/* Scratch of at least BYTES. No call reads what an earlier call left there, so calls an open graph kept
 * before the scratch grew use the new one too (the runtime looks the buffer up at graph_end). */
static int ensure_scratch(vk_backend *vb, size_t bytes) {
  if (vb->scratch.buf && vb->scratch.size >= bytes) return 0;
  size_t want = vb->scratch.size * 2 > bytes ? vb->scratch.size * 2 : bytes;
  qmoe_vk_buf grown, old = vb->scratch;
  int rc = qmoe_vk_buf_create(vb->vk, want < 4096 ? 4096 : want, &grown);
  if (rc) return rc;
  vb->scratch = grown;
  qmoe_vk_buf_destroy(vb->vk, &old); /* waits for work that uses it; a kept graph that does is recorded anew */
  return 0;
}

/* The counters buffer: created zero with the backend, and every call that uses counters leaves them zero. */
enum { COUNTERS = 1024 };

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
                   qmoe_acc_name(c->acc), list[0] ? list : "none");
  else
    qmoe_set_error("vulkan: stage %s has no variant with %s accumulators (Vulkan variants: %s)", si->name,
                   qmoe_acc_name(c->acc), list[0] ? list : "none");
  return QMOE_EUNSUPPORTED;
}

/* ---- one stage call ---- */

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
  if ((unsigned)c->acc >= QMOE_ACC_COUNT) {
    qmoe_set_error("vulkan: stage %s: unknown accumulator %d (valid: QMOE_ACC_F32, QMOE_ACC_F64, QMOE_ACC_Q8)", si->name,
                   (int)c->acc);
    return QMOE_EINVAL;
  }
  const qmoe_vk_variant *v;
  int rc = lookup(c, si, &v);
  if (rc) return rc;
  size_t need[QMOE_STAGE_MAX_BUFS], have[QMOE_STAGE_MAX_BUFS] = {0};
  if ((rc = qmoe_stage_check(c, need))) return rc; /* params, qtype and the bytes each buffer needs */
  const int nbuf = si->n_inputs + si->n_outputs;
  for (int i = 0; i < nbuf; i++)
    if (c->buf[i]) have[i] = c->off[i] > c->buf[i]->b.size ? 0 : (size_t)(c->buf[i]->b.size - c->off[i]);
  if ((rc = qmoe_stage_check_buffers("vulkan", c, need, have))) return rc;
  /* T tokens: the shaders take one token, so the call is enqueued as its T one-token calls (checked whole
   * above; docs/vulkan.md). */
  if (c->tokens > 1) {
    for (int64_t t = 0; t < c->tokens; t++) {
      qmoe_stage_call one;
      qmoe_stage_token_call(c, t, &one);
      if ((rc = vkb_run(be, &one))) return rc;
    }
    return 0;
  }

  const VkDeviceSize align = qmoe_vk_offset_align(vk);
  const VkDeviceSize max_range = qmoe_vk_limits(vk)->maxStorageBufferRange & ~(VkDeviceSize)15;
  qmoe_vk_binding bind[QMOE_VK_MAX_BINDINGS];
  vk_push pc;
  memset(&pc, 0, sizeof pc);
  for (int i = 0; i < nbuf; i++) {
    const char *tname = (si->bufs[i].dtype == QMOE_DTYPE_QTYPE && c->tensor) ? c->tensor : si->buf_names[i];
    const qmoe_vk_buf *b = &c->buf[i]->b;
    /* A buffer that fits one binding is bound whole and the offset goes into o[], so a graph whose offsets
     * change between replays keeps its descriptors; a larger one from the offset rounded down. */
    int whole = b->alloc <= max_range && b->alloc <= UINT32_MAX;
    VkDeviceSize base = whole ? 0 : c->off[i] & ~(align - 1), rem = c->off[i] - base;
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

  /* Workgroups, scratch and extras: the stage's launch function (generated/c/vk_variants.c). */
  const VkPhysicalDeviceLimits *lim = qmoe_vk_limits(vk);
  qmoe_vk_launch_env env = { v->rows, v->pass[0].local_size, c->acc == QMOE_ACC_F64 ? 8 : 4, {0}, {0} };
  for (int d = 0; d < 3; d++) {
    env.devg[d] = lim->maxComputeWorkGroupCount[d];
    env.maxg[d] = vb->max_groups && vb->max_groups < lim->maxComputeWorkGroupCount[d] ? vb->max_groups
                                                                                      : lim->maxComputeWorkGroupCount[d];
  }
  qmoe_vk_launch L;
  memset(&L, 0, sizeof L);
  if ((rc = qmoe_vk_launch_table[c->stage](&env, c->p, &L))) return rc;
  if (L.npass != v->npass) {
    qmoe_set_error("vulkan: stage %s: the launch has %d passes, variant %s has %d", si->name, L.npass, v->what,
                   v->npass);
    return QMOE_EINVAL;
  }
  int nb = nbuf;
  if (L.scratch > 0) {
    if ((rc = ensure_scratch(vb, L.scratch))) return rc;
    bind[nb++] = (qmoe_vk_binding){.buf = &vb->scratch, .off = 0, .writes = 1};
  }
  if (L.counters > COUNTERS) {
    qmoe_set_error("vulkan: stage %s needs %lld counters, the backend has %d", si->name, (long long)L.counters,
                   (int)COUNTERS);
    return QMOE_EUNSUPPORTED;
  }
  if (L.counters > 0) bind[nb++] = (qmoe_vk_binding){.buf = &vb->counters, .off = 0, .writes = 1};
  for (int i = 0; i < 4; i++) pc.x[i] = (uint32_t)L.x[i];
  for (int i = 0; i < L.npass; i++) {
    for (int d = 0; d < 3; d++) {
      if (L.groups[i][d] < 1 || L.groups[i][d] > env.devg[d]) {
        qmoe_set_error("vulkan: stage %s: pass %d needs %lld workgroups in dimension %d, the device allows %lld",
                       si->name, i + 1, (long long)L.groups[i][d], d, (long long)env.devg[d]);
        return QMOE_EUNSUPPORTED;
      }
    }
  }
  VkPipeline pipe[QMOE_VK_MAX_PASSES]; /* every pipeline before the first dispatch: a call records whole or not */
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
  for (int i = 0; i < L.npass; i++)
    if ((rc = qmoe_vk_dispatch(vk, pipe[i], bind, nb, &pc, sizeof pc, (uint32_t)L.groups[i][0],
                               (uint32_t)L.groups[i][1], (uint32_t)L.groups[i][2])))
      return rc;
  return 0;
}

static int vkb_sync(qmoe_backend *be) { return qmoe_vk_sync(impl(be)->vk); }
static int vkb_graph_begin(qmoe_backend *be) { return qmoe_vk_graph_begin(impl(be)->vk); }
static int vkb_graph_end(qmoe_backend *be, int submit) { return qmoe_vk_graph_end(impl(be)->vk, submit); }

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
      qmoe_vk_buf_destroy(vb->vk, &vb->counters);
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
  qmoe_backend *be = qmoe_alloc(sizeof *be, "vulkan backend");
  vk_backend *vb = be ? qmoe_alloc(sizeof *vb, "vulkan backend") : NULL;
  if (!vb) {
    free(be);
    return QMOE_ENOMEM;
  }
  int rc = qmoe_vk_open(&vb->vk);
  if (rc) {
    free(be);
    free(vb);
    return rc;
  }
  static const uint32_t zero[COUNTERS];
  if ((rc = qmoe_vk_buf_create(vb->vk, sizeof zero, &vb->counters)) ||
      (rc = qmoe_vk_buf_write(vb->vk, &vb->counters, 0, zero, sizeof zero))) {
    qmoe_vk_buf_destroy(vb->vk, &vb->counters);
    qmoe_vk_close(vb->vk);
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
  be->graph_begin = vkb_graph_begin;
  be->graph_end = vkb_graph_end;
  be->close = vkb_close;
  be->impl = vb;
  *out = be;
  return 0;
}
