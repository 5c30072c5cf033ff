/* stage_check.c: checks one stage call against its contract (the generated stage table: params and their
 * minimum, `requires` rules, buffer shapes) before any backend runs it; the same checks and messages everywhere. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include "backend.h"
#include "qmoe.h"
#include "stage_table.h"

const char *qmoe_qtype_name(int ggml_type) {
  static _Thread_local char buf[32];
  const qmoe_qtype_info *q = ggml_type >= 0 ? qmoe_qtype_by_id(ggml_type) : NULL;
  if (q) return q->name;
  snprintf(buf, sizeof buf, "ggml type %d", ggml_type);
  return buf;
}

const char *qmoe_acc_name(int acc) {
  return acc == QMOE_ACC_F32 ? "f32" : acc == QMOE_ACC_F64 ? "f64" : acc == QMOE_ACC_Q8 ? "q8" : "?";
}

int qmoe_acc_by_name(const char *name) {
  for (int a = 0; name && a < QMOE_ACC_COUNT; a++)
    if (!strcmp(name, qmoe_acc_name(a))) return a;
  return -1;
}

static const char *tensor_of(const qmoe_stage_call *c, const qmoe_stage_info *si, int buf) {
  return c->tensor ? c->tensor : si->buf_names[buf];
}

/* The quantized weight of a stage that varies by qtype: its first qtype buffer (W, Wg, Wd). */
static int weight_buf(const qmoe_stage_info *si) {
  for (int i = 0; i < si->n_inputs + si->n_outputs; i++)
    if (si->bufs[i].dtype == QMOE_DTYPE_QTYPE) return i;
  return 0;
}

/* Resolves the qtype of a stage that varies by it: the stage must list it and qmoe must have its codec. */
static int check_qtype(const qmoe_stage_call *c, const qmoe_stage_info *si, const qmoe_qtype_info **out) {
  *out = NULL;
  if (!si->varies_by_qtype) {
    if (c->qtype != -1) {
      qmoe_set_error("stage %s does not vary by qtype, but the call passes qtype %d (%s); pass -1", si->name,
                     c->qtype, qmoe_qtype_name(c->qtype));
      return QMOE_EINVAL;
    }
    return 0;
  }
  const qmoe_qtype_info *q = qmoe_stage_has_qtype(si, c->qtype) ? qmoe_qtype_by_id(c->qtype) : NULL;
  if (!q) {
    char supported[256] = "";
    size_t len = 0;
    for (int i = 0; i < si->n_qtypes && len < sizeof supported; i++)
      len += (size_t)snprintf(supported + len, sizeof supported - len, "%s%s", i ? ", " : "",
                              qmoe_qtype_name(si->qtypes[i]));
    qmoe_set_error("stage %s: tensor '%s' has qtype %s, which has no %s variant (supported: %s); add the format "
                   "to contracts/stages/%s.yaml's qtypes",
                   si->name, tensor_of(c, si, weight_buf(si)), qmoe_qtype_name(c->qtype), si->name,
                   supported[0] ? supported : "none", si->name);
    return QMOE_EUNSUPPORTED;
  }
  *out = q;
  return 0;
}

int qmoe_stage_check(const qmoe_stage_call *c, size_t need[QMOE_STAGE_MAX_BUFS]) {
  for (int i = 0; i < QMOE_STAGE_MAX_BUFS; i++) need[i] = 0;
  const qmoe_stage_info *si = c && (unsigned)c->stage < QMOE_STAGE_COUNT ? qmoe_stage_info_get(c->stage) : NULL;
  if (!si) {
    qmoe_set_error("unknown stage id %d (valid: 0..%d)", c ? (int)c->stage : -1, QMOE_STAGE_COUNT - 1);
    return QMOE_EINVAL;
  }
  if ((unsigned)c->acc >= QMOE_ACC_COUNT) {
    qmoe_set_error("stage %s: unknown accumulator %d (valid: QMOE_ACC_F32, QMOE_ACC_F64, QMOE_ACC_Q8)", si->name,
                   (int)c->acc);
    return QMOE_EINVAL;
  }
  const qmoe_qtype_info *q;
  int rc = check_qtype(c, si, &q);
  if (rc) return rc;
  if (!qmoe_stage_has_acc(si, c->qtype, c->acc)) {
    char listed[64] = "";
    size_t len = 0;
    for (int i = 0; i < si->n_accs && len < sizeof listed; i++)
      if (qmoe_stage_has_acc(si, c->qtype, si->accs[i]))
        len += (size_t)snprintf(listed + len, sizeof listed - len, "%s%s", len ? ", " : "", qmoe_acc_name(si->accs[i]));
    qmoe_set_error("stage %s%s%s%s%s has no %s variant (accumulators: %s; docs/q8.md)", si->name,
                   q ? ": tensor '" : "", q ? tensor_of(c, si, weight_buf(si)) : "", q ? "' of qtype " : "",
                   q ? q->name : "", qmoe_acc_name(c->acc), listed[0] ? listed : "none");
    return QMOE_EUNSUPPORTED;
  }
  for (int i = 0; i < si->n_params; i++) {
    if (c->p[i] < si->param_min[i] || c->p[i] > INT32_MAX) {
      qmoe_set_error("stage %s: param %s = %lld is out of range (%lld <= %s <= 2^31-1)", si->name, si->params[i],
                     (long long)c->p[i], (long long)si->param_min[i], si->params[i]);
      return QMOE_EINVAL;
    }
  }
  for (int i = 0; i < si->n_fparams; i++) {
    if (!isfinite(c->f[i])) {
      qmoe_set_error("stage %s: param %s = %g is not finite", si->name, si->fparams[i], c->f[i]);
      return QMOE_EINVAL;
    }
  }
  if (si->rules && (rc = si->rules(c->p, c->f))) return rc;
  /* Tokens: T one-token calls; the last token's params (advanced by T - 1) must pass the same checks. */
  const int64_t T = c->tokens > 1 ? c->tokens : 1;
  if (c->tokens < 0 || c->tokens > QMOE_STAGE_MAX_TOKENS) {
    qmoe_set_error("stage %s: tokens = %lld is out of range (0 or 1: one token; at most %d)", si->name,
                   (long long)c->tokens, QMOE_STAGE_MAX_TOKENS);
    return QMOE_EINVAL;
  }
  if (T > 1 && !si->tokens) {
    qmoe_set_error("stage %s takes one token per call (contracts/stages/%s.yaml has no `tokens`); the call has %lld",
                   si->name, si->name, (long long)T);
    return QMOE_EINVAL;
  }
  if (T > 1 && si->advances) {
    int64_t last[QMOE_STAGE_MAX_PARAMS];
    memcpy(last, c->p, sizeof last);
    for (int i = 0; i < si->n_params; i++) {
      if (!si->advances[i]) continue;
      last[i] += T - 1;
      if (last[i] > INT32_MAX) {
        qmoe_set_error("stage %s: param %s = %lld at the last of %lld tokens is out of range (<= 2^31-1)", si->name,
                       si->params[i], (long long)last[i], (long long)T);
        return QMOE_EINVAL;
      }
    }
    if (si->rules && (rc = si->rules(last, c->f))) {
      char m[512];
      snprintf(m, sizeof m, "%s", qmoe_last_error());
      qmoe_set_error("%s (at the last of %lld tokens)", m, (long long)T);
      return rc;
    }
  }
  for (int i = 0; i < si->n_inputs + si->n_outputs; i++) {
    const qmoe_stage_buf *b = &si->bufs[i];
    if (b->dtype == QMOE_DTYPE_QTYPE && b->n_dims > 0) {
      const qmoe_stage_dim *d = &b->dims[b->n_dims - 1];
      int64_t cols = d->param >= 0 ? c->p[d->param] : d->value;
      if (cols % q->block_elements) {
        qmoe_set_error("stage %s: tensor '%s': %s = %lld is not a multiple of %s's block of %d elements", si->name,
                       tensor_of(c, si, i), d->param >= 0 ? si->params[d->param] : "row length", (long long)cols,
                       q->name, (int)q->block_elements);
        return QMOE_EINVAL;
      }
    }
    int64_t n = qmoe_stage_buf_bytes(si, i, c->p, q);
    if (n >= 0 && b->per_token && __builtin_mul_overflow(n, T, &n)) n = -1;
    need[i] = n < 0 || (uint64_t)n > SIZE_MAX ? SIZE_MAX : (size_t)n; /* overflow: no buffer is that large */
  }
  return 0;
}

size_t qmoe_stage_token_bytes(const qmoe_stage_call *c, int buf) {
  const qmoe_stage_info *si = qmoe_stage_info_get(c->stage);
  if (!si || buf < 0 || buf >= si->n_inputs + si->n_outputs || !si->bufs[buf].per_token) return 0;
  int64_t n = qmoe_stage_buf_bytes(si, buf, c->p, NULL);
  return n < 0 ? 0 : (size_t)n;
}

void qmoe_stage_token_call(const qmoe_stage_call *c, int64_t t, qmoe_stage_call *out) {
  const qmoe_stage_info *si = qmoe_stage_info_get(c->stage);
  *out = *c;
  out->tokens = 1;
  if (!si) return;
  for (int i = 0; i < si->n_inputs + si->n_outputs; i++)
    if (si->bufs[i].per_token) out->off[i] = c->off[i] + (size_t)t * qmoe_stage_token_bytes(c, i);
  for (int i = 0; si->advances && i < si->n_params; i++)
    if (si->advances[i]) out->p[i] = c->p[i] + t;
}

int qmoe_stage_check_buffers(const char *who, const qmoe_stage_call *c, const size_t need[QMOE_STAGE_MAX_BUFS],
                             const size_t have[QMOE_STAGE_MAX_BUFS]) {
  const qmoe_stage_info *si = qmoe_stage_info_get(c->stage);
  for (int i = 0; si && i < si->n_inputs + si->n_outputs; i++) {
    if (!c->buf[i]) {
      qmoe_set_error("%s: stage %s: buffer %d (%s) is NULL", who, si->name, i, si->buf_names[i]);
      return QMOE_EINVAL;
    }
    if (have[i] < need[i]) {
      qmoe_set_error("%s: stage %s: buffer %d (%s%s%s) holds %zu bytes from offset %zu, the call needs %zu", who,
                     si->name, i, si->buf_names[i], c->tensor && si->bufs[i].dtype == QMOE_DTYPE_QTYPE ? ", tensor " : "",
                     c->tensor && si->bufs[i].dtype == QMOE_DTYPE_QTYPE ? c->tensor : "", have[i], c->off[i], need[i]);
      return QMOE_EINVAL;
    }
    if (si->bufs[i].dtype != QMOE_DTYPE_QTYPE && c->off[i] % 4) {
      qmoe_set_error("%s: stage %s: offset %zu of buffer %d (%s) is not a multiple of 4 (f32/i32 elements)", who,
                     si->name, c->off[i], i, si->buf_names[i]);
      return QMOE_EINVAL;
    }
  }
  return 0;
}
