/* ref_stages.c: the CPU reference of every stage of docs/stages.md, written plainly, in three precisions:
 * f32 and f64 accumulation (what the CPU backend runs) and a long-double oracle (what tests compare f64
 * variants with). Quantized weights are decoded with the generated codecs (qmoe_qtype_by_id()->dequant_row).
 *
 * Layout of this file: part 1 (shared code, one qmoe_ref_<stage>() per stage, which generated/c/ref_table.c
 * lists by stage id) includes this same file three times with
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
 * kv_store, add and argmax do not vary by accumulator; add_rmsnorm is add then rmsnorm (the norm in REF_T).
 * A q8 call of a row stage (matvec, moe_gate_up_swiglu, moe_down) runs the same bodies on Q8 of the input
 * vector (qmoe_q8_quantize, docs/q8.md) in the precision asked for: the CPU backend's f32 path, or the
 * f64 / long-double paths on the same x'. */
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

/* q8 is the f32 path on Q8(x): the stage functions quantize by the call's acc, whatever the precision. */
qmoe_ref_prec qmoe_ref_prec_of(qmoe_acc acc) { return acc == QMOE_ACC_F64 ? QMOE_REF_F64 : QMOE_REF_F32; }

static float f32_of_bits(uint32_t b) {
  float f;
  memcpy(&f, &b, sizeof f);
  return f;
}

/* docs/q8.md, per group of 32: a = the largest |x| bit pattern (NaN and inf compare highest); a group holding
 * an inf or NaN becomes NaN; else e = the smallest exponent with max|x| <= 127·2^e, at least -126, and
 * x' = round-to-nearest-even(x·2^-e)·2^e. Both products are exact (powers of two, no overflow, and a product
 * that underflows rounds to ±0 either way), so only the rounding to an integer rounds. */
int qmoe_q8_quantize(const float *x, float *y, int64_t n) {
  if (n < 0 || n % QMOE_Q8_GROUP) {
    qmoe_set_error("qmoe_q8_quantize: n = %lld is not a multiple of the group size %d", (long long)n, QMOE_Q8_GROUP);
    return QMOE_EINVAL;
  }
  for (int64_t g = 0; g < n; g += QMOE_Q8_GROUP) {
    uint32_t a = 0;
    for (int i = 0; i < QMOE_Q8_GROUP; i++) {
      uint32_t b;
      memcpy(&b, &x[g + i], sizeof b);
      if ((b & 0x7fffffffu) > a) a = b & 0x7fffffffu;
    }
    if (a >= 0x7f800000u) {
      for (int i = 0; i < QMOE_Q8_GROUP; i++) y[g + i] = f32_of_bits(0x7fc00000u);
      continue;
    }
    int e = (int)(a >> 23) - 133 + ((a & 0x7fffffu) > 0x7e0000u ? 1 : 0);
    if (e < -126) e = -126;
    const float down = f32_of_bits((uint32_t)(127 - e) << 23), up = f32_of_bits((uint32_t)(127 + e) << 23);
    for (int i = 0; i < QMOE_Q8_GROUP; i++) y[g + i] = nearbyintf(x[g + i] * down) * up;
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
  int rc = qmoe_stage_check(c, need);
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
  if (c->tokens <= 1) return qmoe_ref_table[c->stage](c, prec, q, ptr);
  /* T tokens: T one-token calls in order, as the call's definition says (runtime/stages/backend.h). */
  for (int64_t t = 0; t < c->tokens; t++) {
    qmoe_stage_call one;
    qmoe_stage_token_call(c, t, &one);
    void *tp[QMOE_STAGE_MAX_BUFS];
    for (int i = 0; i < QMOE_STAGE_MAX_BUFS; i++)
      tp[i] = i < si->n_inputs + si->n_outputs ? (char *)ptr[i] + (one.off[i] - c->off[i]) : ptr[i];
    if ((rc = qmoe_ref_table[c->stage](&one, prec, q, tp))) return rc;
  }
  return 0;
}

/* ---- one function per stage (generated/c/ref_table.c lists them), params by their contract names ---- */

#define REF_DISPATCH(fn, ...)                                                                                          \
  (prec == QMOE_REF_F32 ? fn##_f32(__VA_ARGS__) : prec == QMOE_REF_F64 ? fn##_f64(__VA_ARGS__) : fn##_ldbl(__VA_ARGS__))

/* The input vector a row stage reads: X itself, or for a q8 call Q8(X) in a new *TMP (the caller frees it). */
static const float *row_input(const qmoe_stage_call *c, const float *x, int64_t n, float **tmp) {
  *tmp = NULL;
  if (c->acc != QMOE_ACC_Q8) return x;
  *tmp = qmoe_alloc((size_t)n * sizeof(float), "q8 input (CPU reference)");
  if (*tmp && qmoe_q8_quantize(x, *tmp, n)) {
    free(*tmp);
    *tmp = NULL;
  }
  return *tmp;
}

int qmoe_ref_matvec(const qmoe_stage_call *c, qmoe_ref_prec prec, const qmoe_qtype_info *q, void *const *b) {
  float *tmp;
  const float *x = row_input(c, b[QMOE_B_MATVEC_X], c->p[QMOE_P_MATVEC_COLS], &tmp);
  if (!x) return QMOE_ENOMEM;
  int rc = REF_DISPATCH(ref_matvec, q, b[QMOE_B_MATVEC_W], x, b[QMOE_B_MATVEC_Y], c->p[QMOE_P_MATVEC_ROWS],
                        c->p[QMOE_P_MATVEC_COLS]);
  free(tmp);
  return rc;
}

int qmoe_ref_moe_gate_up_swiglu(const qmoe_stage_call *c, qmoe_ref_prec prec, const qmoe_qtype_info *q,
                                void *const *b) {
  const int64_t *p = c->p;
  int rc = check_ids(qmoe_stage_info_get(c->stage), b[QMOE_B_MOE_GATE_UP_SWIGLU_IDS], p[QMOE_P_MOE_GATE_UP_SWIGLU_K],
                     p[QMOE_P_MOE_GATE_UP_SWIGLU_E]);
  if (rc) return rc;
  float *tmp;
  const float *x = row_input(c, b[QMOE_B_MOE_GATE_UP_SWIGLU_X], p[QMOE_P_MOE_GATE_UP_SWIGLU_H], &tmp);
  if (!x) return QMOE_ENOMEM;
  rc = REF_DISPATCH(ref_moe_gate_up_swiglu, q, b[QMOE_B_MOE_GATE_UP_SWIGLU_WG], b[QMOE_B_MOE_GATE_UP_SWIGLU_WU], x,
                    b[QMOE_B_MOE_GATE_UP_SWIGLU_IDS], b[QMOE_B_MOE_GATE_UP_SWIGLU_H], p[QMOE_P_MOE_GATE_UP_SWIGLU_H],
                    p[QMOE_P_MOE_GATE_UP_SWIGLU_F], p[QMOE_P_MOE_GATE_UP_SWIGLU_K]);
  free(tmp);
  return rc;
}

int qmoe_ref_moe_down(const qmoe_stage_call *c, qmoe_ref_prec prec, const qmoe_qtype_info *q, void *const *b) {
  const int64_t *p = c->p;
  int rc = check_ids(qmoe_stage_info_get(c->stage), b[QMOE_B_MOE_DOWN_IDS], p[QMOE_P_MOE_DOWN_K], p[QMOE_P_MOE_DOWN_E]);
  if (rc) return rc;
  /* Each slot's h[k] is quantized on its own: F is a whole number of blocks, so of groups of 32, and the
   * groups of the K×F buffer are the slots' groups. */
  float *tmp;
  const float *h = row_input(c, b[QMOE_B_MOE_DOWN_H], p[QMOE_P_MOE_DOWN_K] * p[QMOE_P_MOE_DOWN_F], &tmp);
  if (!h) return QMOE_ENOMEM;
  rc = REF_DISPATCH(ref_moe_down, q, b[QMOE_B_MOE_DOWN_WD], h, b[QMOE_B_MOE_DOWN_IDS], b[QMOE_B_MOE_DOWN_W],
                    b[QMOE_B_MOE_DOWN_Y], p[QMOE_P_MOE_DOWN_H], p[QMOE_P_MOE_DOWN_F], p[QMOE_P_MOE_DOWN_K]);
  free(tmp);
  return rc;
}

int qmoe_ref_router_topk(const qmoe_stage_call *c, qmoe_ref_prec prec, const qmoe_qtype_info *q, void *const *b) {
  return REF_DISPATCH(ref_router_topk, b[QMOE_B_ROUTER_TOPK_WR], b[QMOE_B_ROUTER_TOPK_X], b[QMOE_B_ROUTER_TOPK_IDS],
               b[QMOE_B_ROUTER_TOPK_W], c->p[QMOE_P_ROUTER_TOPK_H], c->p[QMOE_P_ROUTER_TOPK_E], c->p[QMOE_P_ROUTER_TOPK_K]);
}

int qmoe_ref_rmsnorm(const qmoe_stage_call *c, qmoe_ref_prec prec, const qmoe_qtype_info *q, void *const *b) {
  REF_DISPATCH(ref_rmsnorm, b[QMOE_B_RMSNORM_X], b[QMOE_B_RMSNORM_W], b[QMOE_B_RMSNORM_Y], c->p[QMOE_P_RMSNORM_N],
               c->f[QMOE_F_RMSNORM_EPS]);
  return 0;
}

int qmoe_ref_qk_norm(const qmoe_stage_call *c, qmoe_ref_prec prec, const qmoe_qtype_info *q, void *const *b) {
  const int64_t nh = c->p[QMOE_P_QK_NORM_NH], D = c->p[QMOE_P_QK_NORM_D];
  for (int64_t h = 0; h < nh; h++)
    REF_DISPATCH(ref_rmsnorm, (const float *)b[QMOE_B_QK_NORM_X] + h * D, b[QMOE_B_QK_NORM_W],
                 (float *)b[QMOE_B_QK_NORM_Y] + h * D, D, c->f[QMOE_F_QK_NORM_EPS]);
  return 0;
}

int qmoe_ref_rope_neox(const qmoe_stage_call *c, qmoe_ref_prec prec, const qmoe_qtype_info *q, void *const *b) {
  REF_DISPATCH(ref_rope_neox, b[QMOE_B_ROPE_NEOX_X], b[QMOE_B_ROPE_NEOX_Y], c->p[QMOE_P_ROPE_NEOX_NH],
               c->p[QMOE_P_ROPE_NEOX_D], c->p[QMOE_P_ROPE_NEOX_POS], c->f[QMOE_F_ROPE_NEOX_THETA]);
  return 0;
}

int qmoe_ref_kv_store(const qmoe_stage_call *c, qmoe_ref_prec prec, const qmoe_qtype_info *q, void *const *b) {
  const int64_t *p = c->p;
  size_t row = (size_t)(p[QMOE_P_KV_STORE_NKV] * p[QMOE_P_KV_STORE_D]) * sizeof(float);
  size_t at = (size_t)p[QMOE_P_KV_STORE_POS] * row;
  memmove((unsigned char *)b[QMOE_B_KV_STORE_KC] + at, b[QMOE_B_KV_STORE_K], row);
  memmove((unsigned char *)b[QMOE_B_KV_STORE_VC] + at, b[QMOE_B_KV_STORE_V], row);
  return 0;
}

int qmoe_ref_attention(const qmoe_stage_call *c, qmoe_ref_prec prec, const qmoe_qtype_info *q, void *const *b) {
  const int64_t *p = c->p;
  return REF_DISPATCH(ref_attention, b[QMOE_B_ATTENTION_Q], b[QMOE_B_ATTENTION_KC], b[QMOE_B_ATTENTION_VC],
               b[QMOE_B_ATTENTION_O], p[QMOE_P_ATTENTION_NH], p[QMOE_P_ATTENTION_NKV], p[QMOE_P_ATTENTION_D],
               p[QMOE_P_ATTENTION_N_KV]);
}

/* y = a + b in f32, one rounding per element, in every precision (y may be a): the add stage, and the first
 * half of add_rmsnorm. */
static void add_f32(const float *a, const float *b, float *y, int64_t n) {
  for (int64_t i = 0; i < n; i++) y[i] = a[i] + b[i];
}

int qmoe_ref_add(const qmoe_stage_call *c, qmoe_ref_prec prec, const qmoe_qtype_info *q, void *const *b) {
  add_f32(b[QMOE_B_ADD_A], b[QMOE_B_ADD_B], b[QMOE_B_ADD_Y], c->p[QMOE_P_ADD_N]);
  return 0;
}

/* add then rmsnorm, composed of the two stages' own code: y = a + b as qmoe_ref_add computes it, then xn =
 * rmsnorm(y, w) as qmoe_ref_rmsnorm computes it from y, so the fused stage equals the two-stage path bit for
 * bit in every precision (y may be a: the sums are written before the norm reads them). */
int qmoe_ref_add_rmsnorm(const qmoe_stage_call *c, qmoe_ref_prec prec, const qmoe_qtype_info *q, void *const *b) {
  const int64_t n = c->p[QMOE_P_ADD_RMSNORM_N];
  float *y = b[QMOE_B_ADD_RMSNORM_Y];
  add_f32(b[QMOE_B_ADD_RMSNORM_A], b[QMOE_B_ADD_RMSNORM_B], y, n);
  REF_DISPATCH(ref_rmsnorm, y, b[QMOE_B_ADD_RMSNORM_W], b[QMOE_B_ADD_RMSNORM_XN], n, c->f[QMOE_F_ADD_RMSNORM_EPS]);
  return 0;
}

int qmoe_ref_argmax(const qmoe_stage_call *c, qmoe_ref_prec prec, const qmoe_qtype_info *q, void *const *b) {
  const float *x = b[QMOE_B_ARGMAX_X];
  int64_t best = -1;
  for (int64_t i = 0; i < c->p[QMOE_P_ARGMAX_N]; i++)
    if (!isnan(x[i]) && (best < 0 || x[i] > x[best])) best = i; /* strict: ties keep the lowest index */
  *(int32_t *)b[QMOE_B_ARGMAX_IDX] = (int32_t)(best < 0 ? 0 : best); /* NaN never wins; all NaN gives 0 */
  return 0;
}

/* y = row id of W, decoded: the format's exact f32 values in every precision. An id outside [0, rows) is an
 * error here (the GPU kernels, which cannot report one, write NaN and read nothing). */
int qmoe_ref_embed_rows(const qmoe_stage_call *c, qmoe_ref_prec prec, const qmoe_qtype_info *q, void *const *b) {
  const int64_t cols = c->p[QMOE_P_EMBED_ROWS_COLS], rows = c->p[QMOE_P_EMBED_ROWS_ROWS];
  const int32_t id = *(const int32_t *)b[QMOE_B_EMBED_ROWS_ID];
  if (id < 0 || id >= rows) {
    qmoe_set_error("stage embed_rows: id = %d is outside [0, rows = %lld)%s%s", (int)id, (long long)rows,
                   c->tensor ? " of tensor " : "", c->tensor ? c->tensor : "");
    return QMOE_EINVAL;
  }
  decode_row(q, b[QMOE_B_EMBED_ROWS_W], id, cols, b[QMOE_B_EMBED_ROWS_Y]);
  return 0;
}

/* qk_norm followed by rope_neox, literally: each head normalized into y (rounded to f32 there, as the
 * two-stage path stores it between its stages), then y rotated in place; so every precision gives the
 * two-stage result bit for bit. y may be x (both steps allow it). */
int qmoe_ref_qk_norm_rope(const qmoe_stage_call *c, qmoe_ref_prec prec, const qmoe_qtype_info *q, void *const *b) {
  const int64_t nh = c->p[QMOE_P_QK_NORM_ROPE_NH], D = c->p[QMOE_P_QK_NORM_ROPE_D];
  const float *x = b[QMOE_B_QK_NORM_ROPE_X];
  float *y = b[QMOE_B_QK_NORM_ROPE_Y];
  for (int64_t h = 0; h < nh; h++)
    REF_DISPATCH(ref_rmsnorm, x + h * D, b[QMOE_B_QK_NORM_ROPE_W], y + h * D, D, c->f[QMOE_F_QK_NORM_ROPE_EPS]);
  REF_DISPATCH(ref_rope_neox, y, y, nh, D, c->p[QMOE_P_QK_NORM_ROPE_POS], c->f[QMOE_F_QK_NORM_ROPE_THETA]);
  return 0;
}

#undef REF_DISPATCH

#else /* ---- part 2: the stage bodies for one accumulator type REF_T (angles in REF_A) ---- */

/* Σ w[i]·x[i] in REF_T, in index order. */
static REF_T REF_FN(dot)(const float *w, const float *x, int64_t n) {
  REF_T s = 0;
  for (int64_t i = 0; i < n; i++) s += (REF_T)w[i] * (REF_T)x[i];
  return s;
}

/* y[rows] = W[rows×cols] · x */
static int REF_FN(ref_matvec)(const qmoe_qtype_info *q, const void *W, const float *x, float *y, int64_t rows,
                               int64_t cols) {
  float *row = qmoe_alloc((size_t)cols * sizeof(float), "stage matvec (CPU reference)");
  if (!row) return QMOE_ENOMEM;
  for (int64_t r = 0; r < rows; r++) {
    decode_row(q, W, r, cols, row);
    y[r] = (float)REF_FN(dot)(row, x, cols);
  }
  free(row);
  return 0;
}

/* h[k][f] = silu(Wg[ids_k]·x)[f] · (Wu[ids_k]·x)[f]; each expert is F rows of H. */
static int REF_FN(ref_moe_gate_up_swiglu)(const qmoe_qtype_info *q, const void *Wg, const void *Wu, const float *x,
                                           const int32_t *ids, float *h, int64_t H, int64_t F, int64_t K) {
  float *row = qmoe_alloc((size_t)H * sizeof(float), "stage moe_gate_up_swiglu (CPU reference)");
  if (!row) return QMOE_ENOMEM;
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
  return 0;
}

/* y[H] = Σ_k w_k · (Wd[ids_k]·h_k), k summed in order; each expert is H rows of F. */
static int REF_FN(ref_moe_down)(const qmoe_qtype_info *q, const void *Wd, const float *h, const int32_t *ids,
                                 const float *w, float *y, int64_t H, int64_t F, int64_t K) {
  float *row = qmoe_alloc((size_t)F * sizeof(float), "stage moe_down (CPU reference)");
  if (!row) return QMOE_ENOMEM;
  for (int64_t r = 0; r < H; r++) {
    REF_T acc = 0;
    for (int64_t k = 0; k < K; k++) {
      decode_row(q, Wd, (int64_t)ids[k] * H + r, F, row);
      acc += (REF_T)w[k] * REF_FN(dot)(row, h + k * F, F);
    }
    y[r] = (float)acc;
  }
  free(row);
  return 0;
}

/* logits = Wr·x → softmax over all E → top K by logit (ties: lower index) → w = p / Σ p over the chosen. */
static int REF_FN(ref_router_topk)(const float *Wr, const float *x, int32_t *ids, float *w, int64_t H, int64_t E,
                                    int64_t K) {
  REF_T *logit = qmoe_alloc((size_t)E * sizeof(REF_T), "stage router_topk (CPU reference)");
  REF_T *prob = qmoe_alloc((size_t)E * sizeof(REF_T), "stage router_topk (CPU reference)");
  unsigned char *taken = qmoe_alloc((size_t)E, "stage router_topk (CPU reference)");
  if (!logit || !prob || !taken) {
    free(logit);
    free(prob);
    free(taken);
    return QMOE_ENOMEM;
  }
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
  return 0;
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
static int REF_FN(ref_attention)(const float *q, const float *Kc, const float *Vc, float *o, int64_t nh, int64_t nkv,
                                  int64_t D, int64_t n_kv) {
  REF_T *e = qmoe_alloc((size_t)n_kv * sizeof(REF_T), "stage attention (CPU reference)");
  if (!e) return QMOE_ENOMEM;
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
  return 0;
}

#endif
