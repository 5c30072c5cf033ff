/* ref_stages.c: the CPU reference of every stage of docs/stages.md, written plainly, in three precisions:
 * f32 and f64 accumulation (what the CPU backend runs) and a long-double oracle (what tests compare f64
 * variants with). Quantized weights are decoded with the generated codecs (qmoe_qtype_by_id()->dequant_row).
 *
 * Layout of this file: part 1 (shared code, validation, dispatch) includes this same file three times with
 * REF_T = float, double, long double; part 2 (below `#else`) holds the stage bodies written once for REF_T,
 * so the three precisions cannot drift apart. What each precision means, per stage:
 *   - dot products, sums of squares, softmax sums and attention sums accumulate in REF_T, in index order;
 *     each product is formed in REF_T ((REF_T)w · (REF_T)x);
 *   - SwiGLU (silu and the product), the MoE down-projection's Σ_k w_k·(...) and RMSNorm's scaling are REF_T;
 *   - RoPE angles a = pos·theta^(−2i/D) and their cos/sin are computed in double (long double for the
 *     oracle) in every variant — an f32 angle at pos in the thousands is off by ~1e-4 rad, which is no
 *     accumulator choice but an error — and the rotation itself is done in REF_T;
 *   - router top-K is chosen by logit (softmax is monotonic), ties to the lower index;
 *   - every output is rounded to f32 once, at the end.
 * kv_store, add and argmax do not vary by accumulator. */
#ifndef REF_T
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <tgmath.h>
#include "qmoe.h"
#include "ref_internal.h"
#include "stage_table.h"

/* Out of memory aborts with a message (the library's one allocation policy). */
static void *ref_xmalloc(size_t n) {
  void *p = malloc(n ? n : 1);
  if (!p) {
    fprintf(stderr, "qmoe: out of memory allocating %zu bytes in the CPU reference\n", n);
    abort();
  }
  return p;
}

const char *qmoe_ref_qtype_name(int ggml_type) {
  static _Thread_local char buf[32];
  const qmoe_qtype_info *q = ggml_type >= 0 ? qmoe_qtype_by_id(ggml_type) : NULL;
  if (q) return q->name;
  snprintf(buf, sizeof buf, "ggml type %d", ggml_type);
  return buf;
}

/* Decodes row r of a matrix of rows of COLS elements in qtype Q into dst[COLS]. */
static void decode_row(const qmoe_qtype_info *q, const void *w, int64_t r, int64_t cols, float *dst) {
  size_t row_bytes = (size_t)(cols / q->block_elements) * (size_t)q->block_bytes;
  q->dequant_row((const unsigned char *)w + (size_t)r * row_bytes, dst, cols);
}

#define REF_T float
#define REF_A double
#define REF_FN(name) name##_f32
#include "ref_stages.c"
#undef REF_T
#undef REF_A
#undef REF_FN

#define REF_T double
#define REF_A double
#define REF_FN(name) name##_f64
#include "ref_stages.c"
#undef REF_T
#undef REF_A
#undef REF_FN

#define REF_T long double
#define REF_A long double
#define REF_FN(name) name##_ldbl
#include "ref_stages.c"
#undef REF_T
#undef REF_A
#undef REF_FN

qmoe_ref_prec qmoe_ref_prec_of(qmoe_acc acc) { return acc == QMOE_ACC_F64 ? QMOE_REF_F64 : QMOE_REF_F32; }

/* ---- validation ---- */

/* Bytes of N elements of SIZE bytes each, or SIZE_MAX when it overflows. */
static size_t bytes_of(int64_t n, size_t size) {
  if (n < 0 || (uint64_t)n > SIZE_MAX / size) return SIZE_MAX;
  return (size_t)n * size;
}

/* Product of the given dims (all already checked positive), SIZE_MAX/64 when it overflows, which no buffer
 * is ever that large, so the size check that follows fails with the right message. */
static int64_t prod(int64_t a, int64_t b) {
  int64_t r;
  if (__builtin_mul_overflow(a, b, &r)) return INT64_MAX / 64;
  return r;
}

static const char *tensor_of(const qmoe_stage_call *c, const qmoe_stage_info *si, int buf) {
  return c->tensor ? c->tensor : si->buf_names[buf];
}

/* Resolves the qtype of a stage that varies by it: the stage must list it and qmoe must have its codec. */
static int check_qtype(const qmoe_stage_call *c, const qmoe_stage_info *si, const qmoe_qtype_info **out) {
  *out = NULL;
  if (!si->varies_by_qtype) {
    if (c->qtype != -1) {
      qmoe_set_error("stage %s does not vary by qtype, but the call passes qtype %d (%s); pass -1", si->name,
                     c->qtype, qmoe_ref_qtype_name(c->qtype));
      return QMOE_EINVAL;
    }
    return 0;
  }
  int weight = 0; /* the quantized tensor is the stage's first buffer (W, Wg, Wd) */
  int listed = 0;
  for (int i = 0; i < si->n_qtypes; i++) listed |= si->qtypes[i] == c->qtype;
  const qmoe_qtype_info *q = c->qtype >= 0 ? qmoe_qtype_by_id(c->qtype) : NULL;
  if (!listed || !q) {
    char supported[256] = "";
    size_t len = 0;
    for (int i = 0; i < si->n_qtypes && len < sizeof supported; i++)
      len += (size_t)snprintf(supported + len, sizeof supported - len, "%s%s", i ? ", " : "",
                              qmoe_ref_qtype_name(si->qtypes[i]));
    qmoe_set_error("stage %s: tensor '%s' has qtype %s, which has no %s variant on the CPU reference "
                   "(supported: %s); add the format to contracts/stages/%s.yaml's qtypes",
                   si->name, tensor_of(c, si, weight), qmoe_ref_qtype_name(c->qtype), si->name,
                   supported[0] ? supported : "none", si->name);
    return QMOE_EUNSUPPORTED;
  }
  *out = q;
  return 0;
}

/* Bytes of a quantized matrix of ROWS rows of COLS elements; COLS must be a whole number of blocks. */
static int qmatrix_bytes(const qmoe_stage_call *c, const qmoe_stage_info *si, const qmoe_qtype_info *q,
                         int64_t rows, int64_t cols, const char *cols_name, size_t *out) {
  if (cols % q->block_elements) {
    qmoe_set_error("stage %s: tensor '%s': %s = %lld is not a multiple of %s's block of %d elements", si->name,
                   tensor_of(c, si, 0), cols_name, (long long)cols, q->name, (int)q->block_elements);
    return QMOE_EINVAL;
  }
  *out = bytes_of(prod(rows, cols / q->block_elements), (size_t)q->block_bytes);
  return 0;
}

int qmoe_ref_check(const qmoe_stage_call *c, size_t need[QMOE_STAGE_MAX_BUFS]) {
  for (int i = 0; i < QMOE_STAGE_MAX_BUFS; i++) need[i] = 0;
  const qmoe_stage_info *si = (unsigned)c->stage < QMOE_STAGE_COUNT ? qmoe_stage_info_get(c->stage) : NULL;
  if (!si) {
    qmoe_set_error("unknown stage id %d (valid: 0..%d)", (int)c->stage, QMOE_STAGE_COUNT - 1);
    return QMOE_EINVAL;
  }
  if (c->acc != QMOE_ACC_F32 && c->acc != QMOE_ACC_F64) {
    qmoe_set_error("stage %s: unknown accumulator %d (valid: QMOE_ACC_F32, QMOE_ACC_F64)", si->name, (int)c->acc);
    return QMOE_EINVAL;
  }
  const qmoe_qtype_info *q;
  int rc = check_qtype(c, si, &q);
  if (rc) return rc;
  /* Every integer param is a count or a position: non-negative, and counts (all but pos) positive. */
  for (int i = 0; i < si->n_params; i++) {
    int is_pos = strcmp(si->params[i], "pos") == 0;
    if (c->p[i] < (is_pos ? 0 : 1) || c->p[i] > INT32_MAX) {
      qmoe_set_error("stage %s: param %s = %lld is out of range (%s)", si->name, si->params[i], (long long)c->p[i],
                     is_pos ? "0 <= pos <= 2^31-1" : "1 <= value <= 2^31-1");
      return QMOE_EINVAL;
    }
  }
  for (int i = 0; i < si->n_fparams; i++) {
    if (!isfinite(c->f[i])) {
      qmoe_set_error("stage %s: param %s = %g is not finite", si->name, si->fparams[i], c->f[i]);
      return QMOE_EINVAL;
    }
  }
  const int64_t *p = c->p;
  const size_t f4 = sizeof(float);
  switch (c->stage) {
  case QMOE_STAGE_MATVEC: /* rows, cols; W, x, y */
    if ((rc = qmatrix_bytes(c, si, q, p[0], p[1], "cols", &need[0]))) return rc;
    need[1] = bytes_of(p[1], f4);
    need[2] = bytes_of(p[0], f4);
    break;
  case QMOE_STAGE_MOE_GATE_UP_SWIGLU: /* H, F, E, K; Wg, Wu, x, ids, h */
  case QMOE_STAGE_MOE_DOWN:           /* H, F, E, K; Wd, h, ids, w, y */
  case QMOE_STAGE_ROUTER_TOPK:        /* H, E, K; Wr, x, ids, w */
  {
    int router = c->stage == QMOE_STAGE_ROUTER_TOPK;
    int64_t E = router ? p[1] : p[2], K = router ? p[2] : p[3];
    if (K > E) {
      qmoe_set_error("stage %s: K = %lld experts per token exceeds E = %lld", si->name, (long long)K, (long long)E);
      return QMOE_EINVAL;
    }
    if (c->stage == QMOE_STAGE_MOE_GATE_UP_SWIGLU) {
      if ((rc = qmatrix_bytes(c, si, q, prod(p[2], p[1]), p[0], "H", &need[0]))) return rc;
      need[1] = need[0];
      need[2] = bytes_of(p[0], f4);
      need[3] = bytes_of(K, f4);
      need[4] = bytes_of(prod(K, p[1]), f4);
    } else if (c->stage == QMOE_STAGE_MOE_DOWN) {
      if ((rc = qmatrix_bytes(c, si, q, prod(p[2], p[0]), p[1], "F", &need[0]))) return rc;
      need[1] = bytes_of(prod(K, p[1]), f4);
      need[2] = bytes_of(K, f4);
      need[3] = bytes_of(K, f4);
      need[4] = bytes_of(p[0], f4);
    } else {
      need[0] = bytes_of(prod(E, p[0]), f4);
      need[1] = bytes_of(p[0], f4);
      need[2] = bytes_of(K, f4);
      need[3] = bytes_of(K, f4);
    }
    break;
  }
  case QMOE_STAGE_RMSNORM: /* n, eps; x, w, y */
    need[0] = need[1] = need[2] = bytes_of(p[0], f4);
    break;
  case QMOE_STAGE_QK_NORM: /* nh, D, eps; x, w, y */
    need[0] = need[2] = bytes_of(prod(p[0], p[1]), f4);
    need[1] = bytes_of(p[1], f4);
    break;
  case QMOE_STAGE_ROPE_NEOX: /* nh, D, pos, theta; x, y */
    if (p[1] % 2) {
      qmoe_set_error("stage rope_neox: head dim D = %lld must be even (dims i and i + D/2 are rotated together)",
                     (long long)p[1]);
      return QMOE_EINVAL;
    }
    if (!(c->f[0] > 0)) {
      qmoe_set_error("stage rope_neox: theta = %g must be positive (read rope.freq_base from the model)", c->f[0]);
      return QMOE_EINVAL;
    }
    need[0] = need[1] = bytes_of(prod(p[0], p[1]), f4);
    break;
  case QMOE_STAGE_KV_STORE: /* nkv, D, pos, ctx; k, v, Kc, Vc */
    if (p[2] >= p[3]) {
      qmoe_set_error("stage kv_store: pos = %lld is outside the cache of ctx = %lld positions", (long long)p[2],
                     (long long)p[3]);
      return QMOE_EINVAL;
    }
    need[0] = need[1] = bytes_of(prod(p[0], p[1]), f4);
    need[2] = need[3] = bytes_of(prod(p[3], prod(p[0], p[1])), f4);
    break;
  case QMOE_STAGE_ATTENTION: /* nh, nkv, D, n_kv, ctx; q, Kc, Vc, o */
    if (p[0] % p[1]) {
      qmoe_set_error("stage attention: nh = %lld query heads is not a multiple of nkv = %lld kv heads",
                     (long long)p[0], (long long)p[1]);
      return QMOE_EINVAL;
    }
    if (p[3] > p[4]) {
      qmoe_set_error("stage attention: n_kv = %lld positions exceed the cache of ctx = %lld", (long long)p[3],
                     (long long)p[4]);
      return QMOE_EINVAL;
    }
    need[0] = need[3] = bytes_of(prod(p[0], p[2]), f4);
    need[1] = need[2] = bytes_of(prod(p[4], prod(p[1], p[2])), f4);
    break;
  case QMOE_STAGE_ADD: /* n; a, b, y */
    need[0] = need[1] = need[2] = bytes_of(p[0], f4);
    break;
  case QMOE_STAGE_ARGMAX: /* n; x, idx */
    need[0] = bytes_of(p[0], f4);
    need[1] = f4;
    break;
  default:
    qmoe_set_error("stage %s has no CPU reference", si->name);
    return QMOE_EUNSUPPORTED;
  }
  return 0;
}

/* Expert ids must index one of the E experts (a GPU kernel would read out of bounds). */
static int check_ids(const qmoe_stage_info *si, const int32_t *ids, int64_t K, int64_t E) {
  for (int64_t k = 0; k < K; k++) {
    if (ids[k] < 0 || ids[k] >= E) {
      qmoe_set_error("stage %s: ids[%lld] = %d is outside [0, E = %lld)", si->name, (long long)k, (int)ids[k],
                     (long long)E);
      return QMOE_EINVAL;
    }
  }
  return 0;
}

int qmoe_ref_run(const qmoe_stage_call *c, qmoe_ref_prec prec, void *const ptr[QMOE_STAGE_MAX_BUFS],
                 const size_t size[QMOE_STAGE_MAX_BUFS]) {
  size_t need[QMOE_STAGE_MAX_BUFS];
  int rc = qmoe_ref_check(c, need);
  if (rc) return rc;
  const qmoe_stage_info *si = qmoe_stage_info_get(c->stage);
  for (int i = 0; i < si->n_inputs + si->n_outputs; i++) {
    if (!ptr[i]) {
      qmoe_set_error("stage %s: buffer %d (%s) is missing", si->name, i, si->buf_names[i]);
      return QMOE_EINVAL;
    }
    if (size[i] < need[i]) {
      qmoe_set_error("stage %s: buffer %d (%s%s%s) holds %zu bytes from its offset, the call needs %zu", si->name,
                     i, si->buf_names[i], i == 0 && c->tensor ? ", tensor " : "", i == 0 && c->tensor ? c->tensor : "",
                     size[i], need[i]);
      return QMOE_EINVAL;
    }
  }
  if (prec != QMOE_REF_F32 && prec != QMOE_REF_F64 && prec != QMOE_REF_LDBL) {
    qmoe_set_error("stage %s: unknown reference precision %d", si->name, (int)prec);
    return QMOE_EINVAL;
  }
  const qmoe_qtype_info *q = si->varies_by_qtype ? qmoe_qtype_by_id(c->qtype) : NULL;
  const int64_t *p = c->p;
  void *const *b = ptr;
#define REF_DISPATCH(fn, ...)                                                                                          \
  (prec == QMOE_REF_F32 ? fn##_f32(__VA_ARGS__) : prec == QMOE_REF_F64 ? fn##_f64(__VA_ARGS__) : fn##_ldbl(__VA_ARGS__))
  switch (c->stage) {
  case QMOE_STAGE_MATVEC:
    REF_DISPATCH(ref_matvec, q, b[0], b[1], b[2], p[0], p[1]);
    break;
  case QMOE_STAGE_MOE_GATE_UP_SWIGLU:
    if ((rc = check_ids(si, b[3], p[3], p[2]))) return rc;
    REF_DISPATCH(ref_moe_gate_up_swiglu, q, b[0], b[1], b[2], b[3], b[4], p[0], p[1], p[3]);
    break;
  case QMOE_STAGE_MOE_DOWN:
    if ((rc = check_ids(si, b[2], p[3], p[2]))) return rc;
    REF_DISPATCH(ref_moe_down, q, b[0], b[1], b[2], b[3], b[4], p[0], p[1], p[3]);
    break;
  case QMOE_STAGE_ROUTER_TOPK:
    REF_DISPATCH(ref_router_topk, b[0], b[1], b[2], b[3], p[0], p[1], p[2]);
    break;
  case QMOE_STAGE_RMSNORM:
    REF_DISPATCH(ref_rmsnorm, b[0], b[1], b[2], p[0], c->f[0]);
    break;
  case QMOE_STAGE_QK_NORM:
    for (int64_t h = 0; h < p[0]; h++)
      REF_DISPATCH(ref_rmsnorm, (const float *)b[0] + h * p[1], b[1], (float *)b[2] + h * p[1], p[1], c->f[0]);
    break;
  case QMOE_STAGE_ROPE_NEOX:
    REF_DISPATCH(ref_rope_neox, b[0], b[1], p[0], p[1], p[2], c->f[0]);
    break;
  case QMOE_STAGE_KV_STORE: {
    size_t row = (size_t)(p[0] * p[1]) * sizeof(float), at = (size_t)p[2] * row;
    memmove((unsigned char *)b[2] + at, b[0], row);
    memmove((unsigned char *)b[3] + at, b[1], row);
    break;
  }
  case QMOE_STAGE_ATTENTION:
    REF_DISPATCH(ref_attention, b[0], b[1], b[2], b[3], p[0], p[1], p[2], p[3]);
    break;
  case QMOE_STAGE_ADD: {
    const float *a = b[0], *bb = b[1];
    float *y = b[2];
    for (int64_t i = 0; i < p[0]; i++) y[i] = a[i] + bb[i];
    break;
  }
  case QMOE_STAGE_ARGMAX: {
    const float *x = b[0];
    int64_t best = -1;
    for (int64_t i = 0; i < p[0]; i++)
      if (!isnan(x[i]) && (best < 0 || x[i] > x[best])) best = i; /* strict: ties keep the lowest index */
    *(int32_t *)b[1] = (int32_t)(best < 0 ? 0 : best);             /* NaN never wins; all NaN gives 0 */
    break;
  }
  default:
    qmoe_set_error("stage %s has no CPU reference", si->name);
    return QMOE_EUNSUPPORTED;
  }
#undef REF_DISPATCH
  return 0;
}

#else /* ---- part 2: the stage bodies for one accumulator type REF_T (angles in REF_A) ---- */

/* Σ w[i]·x[i] in REF_T, in index order. */
static REF_T REF_FN(dot)(const float *w, const float *x, int64_t n) {
  REF_T s = 0;
  for (int64_t i = 0; i < n; i++) s += (REF_T)w[i] * (REF_T)x[i];
  return s;
}

/* y[rows] = W[rows×cols] · x */
static void REF_FN(ref_matvec)(const qmoe_qtype_info *q, const void *W, const float *x, float *y, int64_t rows,
                               int64_t cols) {
  float *row = ref_xmalloc((size_t)cols * sizeof(float));
  for (int64_t r = 0; r < rows; r++) {
    decode_row(q, W, r, cols, row);
    y[r] = (float)REF_FN(dot)(row, x, cols);
  }
  free(row);
}

/* h[k][f] = silu(Wg[ids_k]·x)[f] · (Wu[ids_k]·x)[f]; each expert is F rows of H. */
static void REF_FN(ref_moe_gate_up_swiglu)(const qmoe_qtype_info *q, const void *Wg, const void *Wu, const float *x,
                                           const int32_t *ids, float *h, int64_t H, int64_t F, int64_t K) {
  float *row = ref_xmalloc((size_t)H * sizeof(float));
  for (int64_t k = 0; k < K; k++) {
    for (int64_t f = 0; f < F; f++) {
      int64_t r = (int64_t)ids[k] * F + f;
      decode_row(q, Wg, r, H, row);
      REF_T g = REF_FN(dot)(row, x, H);
      decode_row(q, Wu, r, H, row);
      REF_T u = REF_FN(dot)(row, x, H);
      REF_T silu = g / ((REF_T)1 + exp(-g));
      h[k * F + f] = (float)(silu * u);
    }
  }
  free(row);
}

/* y[H] = Σ_k w_k · (Wd[ids_k]·h_k), k summed in order; each expert is H rows of F. */
static void REF_FN(ref_moe_down)(const qmoe_qtype_info *q, const void *Wd, const float *h, const int32_t *ids,
                                 const float *w, float *y, int64_t H, int64_t F, int64_t K) {
  float *row = ref_xmalloc((size_t)F * sizeof(float));
  for (int64_t r = 0; r < H; r++) {
    REF_T acc = 0;
    for (int64_t k = 0; k < K; k++) {
      decode_row(q, Wd, (int64_t)ids[k] * H + r, F, row);
      acc += (REF_T)w[k] * REF_FN(dot)(row, h + k * F, F);
    }
    y[r] = (float)acc;
  }
  free(row);
}

/* logits = Wr·x → softmax over all E → top K by logit (ties: lower index) → w = p / Σ p over the chosen. */
static void REF_FN(ref_router_topk)(const float *Wr, const float *x, int32_t *ids, float *w, int64_t H, int64_t E,
                                    int64_t K) {
  REF_T *logit = ref_xmalloc((size_t)E * sizeof(REF_T)), *prob = ref_xmalloc((size_t)E * sizeof(REF_T));
  unsigned char *taken = ref_xmalloc((size_t)E);
  REF_T max = 0, sum = 0;
  for (int64_t e = 0; e < E; e++) {
    logit[e] = REF_FN(dot)(Wr + e * H, x, H);
    if (e == 0 || logit[e] > max) max = logit[e];
    taken[e] = 0;
  }
  for (int64_t e = 0; e < E; e++) {
    prob[e] = exp(logit[e] - max);
    sum += prob[e];
  }
  for (int64_t e = 0; e < E; e++) prob[e] /= sum;
  REF_T chosen = 0;
  for (int64_t k = 0; k < K; k++) {
    int64_t best = -1;
    for (int64_t e = 0; e < E; e++)
      if (!taken[e] && (best < 0 || logit[e] > logit[best])) best = e; /* strict: ties keep the lower index */
    taken[best] = 1;
    ids[k] = (int32_t)best;
    chosen += prob[best];
  }
  for (int64_t k = 0; k < K; k++) w[k] = (float)(prob[ids[k]] / chosen);
  free(logit);
  free(prob);
  free(taken);
}

/* y[n] = x · (1/sqrt(mean(x²) + eps)) · w (y may be x: the sum is taken before any write). */
static void REF_FN(ref_rmsnorm)(const float *x, const float *w, float *y, int64_t n, double eps) {
  REF_T ss = 0;
  for (int64_t i = 0; i < n; i++) ss += (REF_T)x[i] * (REF_T)x[i];
  REF_T r = (REF_T)1 / sqrt(ss / (REF_T)n + (REF_T)eps);
  for (int64_t i = 0; i < n; i++) y[i] = (float)((REF_T)x[i] * r * (REF_T)w[i]);
}

/* NEOX RoPE on each of nh heads of D: dims i and i + D/2 rotate by a = pos·theta^(−2i/D) (y may be x). */
static void REF_FN(ref_rope_neox)(const float *x, float *y, int64_t nh, int64_t D, int64_t pos, double theta) {
  int64_t half = D / 2;
  for (int64_t i = 0; i < half; i++) {
    REF_A a = (REF_A)pos * pow((REF_A)theta, -(REF_A)(2 * i) / (REF_A)D);
    REF_T c = (REF_T)cos(a), s = (REF_T)sin(a);
    for (int64_t h = 0; h < nh; h++) {
      REF_T x0 = (REF_T)x[h * D + i], x1 = (REF_T)x[h * D + i + half];
      REF_T y0 = x0 * c - x1 * s, y1 = x0 * s + x1 * c;
      y[h * D + i] = (float)y0;
      y[h * D + i + half] = (float)y1;
    }
  }
}

/* GQA attention over the first n_kv cache positions: head h reads kv head h/(nh/nkv); scores·(1/sqrt(D)),
 * softmax, o = Σ_j e_j·V_j / Σ_j e_j. Cache row j of kv head g is at (j·nkv + g)·D. */
static void REF_FN(ref_attention)(const float *q, const float *Kc, const float *Vc, float *o, int64_t nh, int64_t nkv,
                                  int64_t D, int64_t n_kv) {
  REF_T *e = ref_xmalloc((size_t)n_kv * sizeof(REF_T));
  REF_T scale = (REF_T)1 / sqrt((REF_T)D);
  int64_t group = nh / nkv;
  for (int64_t h = 0; h < nh; h++) {
    int64_t g = h / group;
    REF_T max = 0, sum = 0;
    for (int64_t j = 0; j < n_kv; j++) {
      e[j] = REF_FN(dot)(q + h * D, Kc + (j * nkv + g) * D, D) * scale;
      if (j == 0 || e[j] > max) max = e[j];
    }
    for (int64_t j = 0; j < n_kv; j++) {
      e[j] = exp(e[j] - max);
      sum += e[j];
    }
    for (int64_t d = 0; d < D; d++) {
      REF_T acc = 0;
      for (int64_t j = 0; j < n_kv; j++) acc += e[j] * (REF_T)Vc[(j * nkv + g) * D + d];
      o[h * D + d] = (float)(acc / sum);
    }
  }
  free(e);
}

#endif
