/* stage_calls_tmp.h: TEMPORARY hand-written typed stage-call builders, with the signatures the stage-model
 * helper's generator will emit (issue 8). DELETE this file when the generated builders land. */
#ifndef QMOE_STAGE_CALLS_TMP_H
#define QMOE_STAGE_CALLS_TMP_H
#include <string.h>
#include "backend.h"
#include "stage_table.h"

/* Zeroes *c and sets the stage, qtype -1, acc f32, offsets 0, tensor NULL. */
static inline void qmoe_call_init_tmp_(qmoe_stage_call *c, qmoe_stage s) {
  memset(c, 0, sizeof *c);
  c->stage = s;
  c->qtype = -1;
  c->acc = QMOE_ACC_F32;
}

static inline void qmoe_call_matvec(qmoe_stage_call *c, int64_t rows, int64_t cols, qmoe_buffer *W, qmoe_buffer *x,
                                    qmoe_buffer *y) {
  qmoe_call_init_tmp_(c, QMOE_STAGE_MATVEC);
  c->p[QMOE_P_MATVEC_ROWS] = rows, c->p[QMOE_P_MATVEC_COLS] = cols;
  c->buf[QMOE_B_MATVEC_W] = W, c->buf[QMOE_B_MATVEC_X] = x, c->buf[QMOE_B_MATVEC_Y] = y;
}

static inline void qmoe_call_moe_gate_up_swiglu(qmoe_stage_call *c, int64_t H, int64_t F, int64_t E, int64_t K,
                                                qmoe_buffer *Wg, qmoe_buffer *Wu, qmoe_buffer *x, qmoe_buffer *ids,
                                                qmoe_buffer *h) {
  qmoe_call_init_tmp_(c, QMOE_STAGE_MOE_GATE_UP_SWIGLU);
  c->p[QMOE_P_MOE_GATE_UP_SWIGLU_H] = H, c->p[QMOE_P_MOE_GATE_UP_SWIGLU_F] = F;
  c->p[QMOE_P_MOE_GATE_UP_SWIGLU_E] = E, c->p[QMOE_P_MOE_GATE_UP_SWIGLU_K] = K;
  c->buf[QMOE_B_MOE_GATE_UP_SWIGLU_WG] = Wg, c->buf[QMOE_B_MOE_GATE_UP_SWIGLU_WU] = Wu;
  c->buf[QMOE_B_MOE_GATE_UP_SWIGLU_X] = x, c->buf[QMOE_B_MOE_GATE_UP_SWIGLU_IDS] = ids;
  c->buf[QMOE_B_MOE_GATE_UP_SWIGLU_H] = h;
}

static inline void qmoe_call_moe_down(qmoe_stage_call *c, int64_t H, int64_t F, int64_t E, int64_t K, qmoe_buffer *Wd,
                                      qmoe_buffer *h, qmoe_buffer *ids, qmoe_buffer *w, qmoe_buffer *y) {
  qmoe_call_init_tmp_(c, QMOE_STAGE_MOE_DOWN);
  c->p[QMOE_P_MOE_DOWN_H] = H, c->p[QMOE_P_MOE_DOWN_F] = F, c->p[QMOE_P_MOE_DOWN_E] = E, c->p[QMOE_P_MOE_DOWN_K] = K;
  c->buf[QMOE_B_MOE_DOWN_WD] = Wd, c->buf[QMOE_B_MOE_DOWN_H] = h, c->buf[QMOE_B_MOE_DOWN_IDS] = ids;
  c->buf[QMOE_B_MOE_DOWN_W] = w, c->buf[QMOE_B_MOE_DOWN_Y] = y;
}

static inline void qmoe_call_router_topk(qmoe_stage_call *c, int64_t H, int64_t E, int64_t K, qmoe_buffer *Wr,
                                         qmoe_buffer *x, qmoe_buffer *ids, qmoe_buffer *w) {
  qmoe_call_init_tmp_(c, QMOE_STAGE_ROUTER_TOPK);
  c->p[QMOE_P_ROUTER_TOPK_H] = H, c->p[QMOE_P_ROUTER_TOPK_E] = E, c->p[QMOE_P_ROUTER_TOPK_K] = K;
  c->buf[QMOE_B_ROUTER_TOPK_WR] = Wr, c->buf[QMOE_B_ROUTER_TOPK_X] = x;
  c->buf[QMOE_B_ROUTER_TOPK_IDS] = ids, c->buf[QMOE_B_ROUTER_TOPK_W] = w;
}

static inline void qmoe_call_rmsnorm(qmoe_stage_call *c, int64_t n, double eps, qmoe_buffer *x, qmoe_buffer *w,
                                     qmoe_buffer *y) {
  qmoe_call_init_tmp_(c, QMOE_STAGE_RMSNORM);
  c->p[QMOE_P_RMSNORM_N] = n, c->f[QMOE_F_RMSNORM_EPS] = eps;
  c->buf[QMOE_B_RMSNORM_X] = x, c->buf[QMOE_B_RMSNORM_W] = w, c->buf[QMOE_B_RMSNORM_Y] = y;
}

static inline void qmoe_call_qk_norm(qmoe_stage_call *c, int64_t nh, int64_t D, double eps, qmoe_buffer *x,
                                     qmoe_buffer *w, qmoe_buffer *y) {
  qmoe_call_init_tmp_(c, QMOE_STAGE_QK_NORM);
  c->p[QMOE_P_QK_NORM_NH] = nh, c->p[QMOE_P_QK_NORM_D] = D, c->f[QMOE_F_QK_NORM_EPS] = eps;
  c->buf[QMOE_B_QK_NORM_X] = x, c->buf[QMOE_B_QK_NORM_W] = w, c->buf[QMOE_B_QK_NORM_Y] = y;
}

static inline void qmoe_call_rope_neox(qmoe_stage_call *c, int64_t nh, int64_t D, int64_t pos, double theta,
                                       qmoe_buffer *x, qmoe_buffer *y) {
  qmoe_call_init_tmp_(c, QMOE_STAGE_ROPE_NEOX);
  c->p[QMOE_P_ROPE_NEOX_NH] = nh, c->p[QMOE_P_ROPE_NEOX_D] = D, c->p[QMOE_P_ROPE_NEOX_POS] = pos;
  c->f[QMOE_F_ROPE_NEOX_THETA] = theta;
  c->buf[QMOE_B_ROPE_NEOX_X] = x, c->buf[QMOE_B_ROPE_NEOX_Y] = y;
}

static inline void qmoe_call_kv_store(qmoe_stage_call *c, int64_t nkv, int64_t D, int64_t pos, int64_t ctx,
                                      qmoe_buffer *k, qmoe_buffer *v, qmoe_buffer *Kc, qmoe_buffer *Vc) {
  qmoe_call_init_tmp_(c, QMOE_STAGE_KV_STORE);
  c->p[QMOE_P_KV_STORE_NKV] = nkv, c->p[QMOE_P_KV_STORE_D] = D, c->p[QMOE_P_KV_STORE_POS] = pos;
  c->p[QMOE_P_KV_STORE_CTX] = ctx;
  c->buf[QMOE_B_KV_STORE_K] = k, c->buf[QMOE_B_KV_STORE_V] = v;
  c->buf[QMOE_B_KV_STORE_KC] = Kc, c->buf[QMOE_B_KV_STORE_VC] = Vc;
}

static inline void qmoe_call_attention(qmoe_stage_call *c, int64_t nh, int64_t nkv, int64_t D, int64_t n_kv,
                                       int64_t ctx, qmoe_buffer *q, qmoe_buffer *Kc, qmoe_buffer *Vc, qmoe_buffer *o) {
  qmoe_call_init_tmp_(c, QMOE_STAGE_ATTENTION);
  c->p[QMOE_P_ATTENTION_NH] = nh, c->p[QMOE_P_ATTENTION_NKV] = nkv, c->p[QMOE_P_ATTENTION_D] = D;
  c->p[QMOE_P_ATTENTION_N_KV] = n_kv, c->p[QMOE_P_ATTENTION_CTX] = ctx;
  c->buf[QMOE_B_ATTENTION_Q] = q, c->buf[QMOE_B_ATTENTION_KC] = Kc, c->buf[QMOE_B_ATTENTION_VC] = Vc;
  c->buf[QMOE_B_ATTENTION_O] = o;
}

static inline void qmoe_call_add(qmoe_stage_call *c, int64_t n, qmoe_buffer *a, qmoe_buffer *b, qmoe_buffer *y) {
  qmoe_call_init_tmp_(c, QMOE_STAGE_ADD);
  c->p[QMOE_P_ADD_N] = n;
  c->buf[QMOE_B_ADD_A] = a, c->buf[QMOE_B_ADD_B] = b, c->buf[QMOE_B_ADD_Y] = y;
}

static inline void qmoe_call_argmax(qmoe_stage_call *c, int64_t n, qmoe_buffer *x, qmoe_buffer *idx) {
  qmoe_call_init_tmp_(c, QMOE_STAGE_ARGMAX);
  c->p[QMOE_P_ARGMAX_N] = n;
  c->buf[QMOE_B_ARGMAX_X] = x, c->buf[QMOE_B_ARGMAX_IDX] = idx;
}

#endif
