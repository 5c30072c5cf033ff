/* test_stage_table.c: the generated stage table (from contracts/stages) agrees with runtime/stages/backend.h —
 * the qmoe_stage enum order, each stage's variants, int/float param lists and buffer lists as backend.h
 * documents them — and the contracts' buffer shapes give the sizes the CPU reference requires. A drifted
 * contract (or header) fails here. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "../harness.h"
#include "backend.h"
#include "qmoe.h"
#include "ref_internal.h"
#include "stage_table.h"
#include "pv.h"

/* backend.h, transcribed: enum id, name, int params, float params, buffers (inputs then outputs; the
 * first n_in are inputs), quantized buffers, varies by qtype / acc. */
static const struct {
  qmoe_stage id;
  const char *name, *params, *fparams, *bufs;
  int n_in;
  const char *qbufs, *ibufs;
  int by_qtype, by_acc;
} want[] = {
    {QMOE_STAGE_MATVEC, "matvec", "rows cols", "", "W x y", 2, "W", "", 1, 1},
    {QMOE_STAGE_MOE_GATE_UP_SWIGLU, "moe_gate_up_swiglu", "H F E K", "", "Wg Wu x ids h", 4, "Wg Wu", "ids", 1, 1},
    {QMOE_STAGE_MOE_DOWN, "moe_down", "H F E K", "", "Wd h ids w y", 4, "Wd", "ids", 1, 1},
    {QMOE_STAGE_ROUTER_TOPK, "router_topk", "H E K", "", "Wr x ids w", 2, "", "ids", 0, 1},
    {QMOE_STAGE_RMSNORM, "rmsnorm", "n", "eps", "x w y", 2, "", "", 0, 1},
    {QMOE_STAGE_QK_NORM, "qk_norm", "nh D", "eps", "x w y", 2, "", "", 0, 1},
    {QMOE_STAGE_ROPE_NEOX, "rope_neox", "nh D pos", "theta", "x y", 1, "", "", 0, 1},
    {QMOE_STAGE_KV_STORE, "kv_store", "nkv D pos ctx", "", "k v Kc Vc", 2, "", "", 0, 0},
    {QMOE_STAGE_ATTENTION, "attention", "nh nkv D n_kv ctx", "", "q Kc Vc o", 3, "", "", 0, 1},
    {QMOE_STAGE_ADD, "add", "n", "", "a b y", 2, "", "", 0, 0},
    {QMOE_STAGE_ARGMAX, "argmax", "n", "", "x idx", 1, "", "idx", 0, 0},
};

/* Joins a list of names with single spaces into BUF. */
static const char *join(char *buf, size_t size, const char *const *names, int n) {
  size_t len = 0;
  buf[0] = 0;
  for (int i = 0; i < n && len < size; i++) len += (size_t)snprintf(buf + len, size - len, "%s%s", i ? " " : "", names[i]);
  return buf;
}

/* Whether NAME is one of the space-separated words of LIST. */
static int in_list(const char *list, const char *name) {
  size_t n = strlen(name);
  for (const char *p = list; (p = strstr(p, name)) != NULL; p += n)
    if ((p == list || p[-1] == ' ') && (p[n] == 0 || p[n] == ' ')) return 1;
  return 0;
}

static void test_enum_matches_contracts(void) {
  CHECK((int)QMOE_STAGE_TABLE_COUNT == (int)QMOE_STAGE_COUNT, "contracts/stages has %d stages, backend.h's qmoe_stage has %d",
        (int)QMOE_STAGE_TABLE_COUNT, (int)QMOE_STAGE_COUNT);
  /* The transcription pins the stages the model forward was written against; later stages only add. */
  CHECK(sizeof want / sizeof want[0] <= QMOE_STAGE_COUNT, "this test transcribes %zu stages, the table has %d",
        sizeof want / sizeof want[0], (int)QMOE_STAGE_COUNT);
  CHECK(qmoe_stage_info_get(QMOE_STAGE_COUNT) == NULL, "a stage past QMOE_STAGE_COUNT");
  for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
    const qmoe_stage_info *si = qmoe_stage_info_get(want[i].id);
    if (!si) {
      CHECK(0, "no contract with order %d (backend.h: %s)", (int)want[i].id, want[i].name);
      continue;
    }
    char buf[256];
    CHECK(!strcmp(si->name, want[i].name), "stage %d is '%s' in %s, backend.h says '%s'", (int)want[i].id, si->name,
          si->file, want[i].name);
    CHECK(si->id == want[i].id, "%s: id %d", si->name, (int)si->id);
    CHECK(qmoe_stage_by_name(want[i].name) == si, "qmoe_stage_by_name(%s)", want[i].name);
    CHECK(!strcmp(join(buf, sizeof buf, si->params, si->n_params), want[i].params), "%s: int params '%s' in %s, backend.h: '%s'",
          si->name, buf, si->file, want[i].params);
    CHECK(!strcmp(join(buf, sizeof buf, si->fparams, si->n_fparams), want[i].fparams),
          "%s: float params '%s' in %s, backend.h: '%s'", si->name, buf, si->file, want[i].fparams);
    CHECK(!strcmp(join(buf, sizeof buf, si->buf_names, si->n_inputs + si->n_outputs), want[i].bufs),
          "%s: buffers '%s' in %s, backend.h: '%s'", si->name, buf, si->file, want[i].bufs);
    CHECK(si->n_inputs == want[i].n_in, "%s: %d inputs in %s, backend.h: %d", si->name, si->n_inputs, si->file, want[i].n_in);
    CHECK(si->n_params <= QMOE_STAGE_MAX_PARAMS && si->n_fparams <= QMOE_STAGE_MAX_FPARAMS &&
              si->n_inputs + si->n_outputs <= QMOE_STAGE_MAX_BUFS, "%s: more params or buffers than a call holds", si->name);
    CHECK(si->varies_by_qtype == want[i].by_qtype && si->varies_by_acc == want[i].by_acc,
          "%s: varies_by qtype=%d acc=%d in %s, docs/stages.md: qtype=%d acc=%d", si->name, si->varies_by_qtype,
          si->varies_by_acc, si->file, want[i].by_qtype, want[i].by_acc);
    for (int b = 0; b < si->n_inputs + si->n_outputs; b++) {
      const char *n = si->bufs[b].name;
      qmoe_dtype d = in_list(want[i].qbufs, n) ? QMOE_DTYPE_QTYPE : in_list(want[i].ibufs, n) ? QMOE_DTYPE_I32 : QMOE_DTYPE_F32;
      CHECK(si->bufs[b].dtype == d, "%s: buffer %s has dtype %d in %s, want %d", si->name, n, (int)si->bufs[b].dtype, si->file, (int)d);
      CHECK(si->bufs[b].is_output == (b >= si->n_inputs), "%s: buffer %s input/output mixed up", si->name, n);
    }
    if (si->varies_by_qtype) {
      CHECK(si->n_qtypes > 0, "%s varies by qtype but lists none", si->name);
      for (int q = 0; q < si->n_qtypes; q++) {
        CHECK(qmoe_qtype_by_id(si->qtypes[q]) != NULL, "%s lists ggml type %d, which has no codec", si->name, si->qtypes[q]);
        CHECK(q == 0 || si->qtypes[q] > si->qtypes[q - 1], "%s: qtypes not ascending", si->name);
        CHECK(qmoe_stage_has_qtype(si, si->qtypes[q]), "qmoe_stage_has_qtype(%s, %d)", si->name, si->qtypes[q]);
      }
      CHECK(!qmoe_stage_has_qtype(si, -1), "%s accepts qtype -1", si->name);
    } else {
      CHECK(si->n_qtypes == 0 && qmoe_stage_has_qtype(si, -1), "%s does not vary by qtype but lists qtypes", si->name);
    }
    for (int a = 0; a < si->n_accs; a++)
      CHECK((unsigned)si->accs[a] < QMOE_ACC_COUNT && (a < 2 ? (int)si->accs[a] == a : si->accs[a] == QMOE_ACC_Q8),
            "%s: accumulator %d at %d (f32, f64, then q8)", si->name, (int)si->accs[a], a);
    if (si->varies_by_acc)
      CHECK(si->n_accs == 2 || si->n_accs == 3, "%s varies by acc but lists %d accumulators", si->name, si->n_accs);
  }
}

static int64_t rand_int(int64_t lo, int64_t hi) { return lo + (int64_t)(t_rand_u64() % (uint64_t)(hi - lo + 1)); }

/* For random valid params, each buffer's size from the contract's shape equals what the reference needs. */
static void test_shapes_match_reference(void) {
  for (int s = 0; s < QMOE_STAGE_COUNT; s++) {
    const qmoe_stage_info *si = qmoe_stage_info_get((qmoe_stage)s);
    if (!si) continue;
    int nq = si->varies_by_qtype ? si->n_qtypes : 1;
    for (int qi = 0; qi < nq; qi++) {
      for (int trial = 0; trial < 5; trial++) {
        qmoe_stage_call c = {0};
        c.stage = si->id;
        c.qtype = si->varies_by_qtype ? si->qtypes[qi] : -1;
        c.acc = QMOE_ACC_F32;
        /* Every param a random count; then the ordering constraints the stages have (K <= E, pos < ctx,
         * n_kv <= ctx, nh a multiple of nkv, D even). */
        for (int i = 0; i < si->n_params; i++) c.p[i] = 256 * rand_int(1, 3);
        for (int i = 0; i < si->n_fparams; i++) c.f[i] = 1e-6 * rand_int(1, 9) + (strcmp(si->fparams[i], "theta") ? 0 : 1e4);
        for (int i = 0; i < si->n_params; i++) {
          const char *n = si->params[i];
          if (!strcmp(n, "K")) c.p[i] = rand_int(1, 8);
          if (!strcmp(n, "E")) c.p[i] = rand_int(8, 16);
          if (!strcmp(n, "nkv")) c.p[i] = 2;
          if (!strcmp(n, "nh")) c.p[i] = 2 * rand_int(1, 8);
          if (!strcmp(n, "pos") || !strcmp(n, "n_kv")) c.p[i] = rand_int(1, 200);
          if (!strcmp(n, "ctx")) c.p[i] = rand_int(201, 300);
        }
        size_t need[QMOE_STAGE_MAX_BUFS];
        int rc = qmoe_stage_check(&c, need);
        if (rc) {
          CHECK(0, "%s: the reference rejects random valid params: %s", si->name, qmoe_last_error());
          break;
        }
        const qmoe_qtype_info *qt = c.qtype >= 0 ? qmoe_qtype_by_id(c.qtype) : NULL;
        for (int b = 0; b < si->n_inputs + si->n_outputs; b++) {
          int64_t bytes = qmoe_stage_buf_bytes(si, b, c.p, qt);
          CHECK(bytes >= 0 && (size_t)bytes == need[b], "%s/%s: buffer %s is %lld bytes by %s's shape, the reference needs %zu",
                si->name, qt ? qt->name : "-", si->bufs[b].name, (long long)bytes, si->file, need[b]);
        }
      }
    }
  }
}

/* The typed builders fill every field: a call pre-filled with garbage comes out with the stage, the params
 * and buffers at their named indices, qtype -1, acc f32, every offset 0 and no tensor name. */
static void test_builders(void) {
  qmoe_buffer *B[8];
  for (int i = 0; i < 8; i++) B[i] = (qmoe_buffer *)(uintptr_t)(0x1000 * (i + 1));
  qmoe_stage_call c;
  memset(&c, 0x5a, sizeof c);
  qmoe_call_moe_down(&c, 11, 22, 33, 4, B[0], B[1], B[2], B[3], B[4]);
  CHECK(c.stage == QMOE_STAGE_MOE_DOWN && c.qtype == -1 && c.acc == QMOE_ACC_F32 && c.tensor == NULL, "moe_down header");
  CHECK(c.p[QMOE_P_MOE_DOWN_H] == 11 && c.p[QMOE_P_MOE_DOWN_F] == 22 && c.p[QMOE_P_MOE_DOWN_E] == 33 &&
            c.p[QMOE_P_MOE_DOWN_K] == 4 && c.p[4] == 0, "moe_down params");
  CHECK(c.buf[QMOE_B_MOE_DOWN_WD] == B[0] && c.buf[QMOE_B_MOE_DOWN_H] == B[1] && c.buf[QMOE_B_MOE_DOWN_IDS] == B[2] &&
            c.buf[QMOE_B_MOE_DOWN_W] == B[3] && c.buf[QMOE_B_MOE_DOWN_Y] == B[4] && c.buf[5] == NULL, "moe_down buffers");
  int zero = 1;
  for (int i = 0; i < QMOE_STAGE_MAX_BUFS; i++) zero &= c.off[i] == 0;
  for (int i = 0; i < QMOE_STAGE_MAX_FPARAMS; i++) zero &= c.f[i] == 0;
  CHECK(zero, "moe_down: offsets and float params not zeroed");
  memset(&c, 0x5a, sizeof c);
  qmoe_call_rope_neox(&c, 8, 128, 77, 1e6, B[5], B[6]);
  CHECK(c.stage == QMOE_STAGE_ROPE_NEOX && c.p[QMOE_P_ROPE_NEOX_NH] == 8 && c.p[QMOE_P_ROPE_NEOX_D] == 128 &&
            c.p[QMOE_P_ROPE_NEOX_POS] == 77 && c.f[QMOE_F_ROPE_NEOX_THETA] == 1e6 && c.buf[QMOE_B_ROPE_NEOX_X] == B[5] &&
            c.buf[QMOE_B_ROPE_NEOX_Y] == B[6] && c.qtype == -1 && c.off[1] == 0, "rope_neox");
  memset(&c, 0x5a, sizeof c);
  qmoe_call_rmsnorm(&c, 2048, 1e-6, B[0], B[1], B[2]);
  CHECK(c.stage == QMOE_STAGE_RMSNORM && c.p[QMOE_P_RMSNORM_N] == 2048 && c.f[QMOE_F_RMSNORM_EPS] == 1e-6 &&
            c.buf[QMOE_B_RMSNORM_Y] == B[2] && c.acc == QMOE_ACC_F32, "rmsnorm");
  /* The validator's limits (src/lib/pv.h) are what a call carries. */
  CHECK((int)PV_STAGE_MAX_PARAMS == (int)QMOE_STAGE_MAX_PARAMS && (int)PV_STAGE_MAX_FPARAMS == (int)QMOE_STAGE_MAX_FPARAMS &&
            (int)PV_STAGE_MAX_BUFS == (int)QMOE_STAGE_MAX_BUFS, "src/lib/pv.h's PV_STAGE_MAX_* differ from backend.h's");
}

/* The contracts' rules and param minimums reject bad params with the contract's message. */
static void test_rules(void) {
  size_t need[QMOE_STAGE_MAX_BUFS];
  qmoe_stage_call c;
  qmoe_call_rope_neox(&c, 2, 7, 0, 1e4, NULL, NULL);
  CHECK(qmoe_stage_check(&c, need) == QMOE_EINVAL && strstr(qmoe_last_error(), "D = 7 must be even"), "odd D: %s",
        qmoe_last_error());
  qmoe_call_rope_neox(&c, 2, 8, 0, -1, NULL, NULL);
  CHECK(qmoe_stage_check(&c, need) == QMOE_EINVAL && strstr(qmoe_last_error(), "theta = -1"), "theta: %s", qmoe_last_error());
  qmoe_call_rope_neox(&c, 2, 8, 0, 1e4, NULL, NULL);
  CHECK(qmoe_stage_check(&c, need) == 0 && need[QMOE_B_ROPE_NEOX_Y] == 2 * 8 * 4, "pos 0 (min 0): %s", qmoe_last_error());
  qmoe_call_rope_neox(&c, 2, 8, -1, 1e4, NULL, NULL);
  CHECK(qmoe_stage_check(&c, need) == QMOE_EINVAL && strstr(qmoe_last_error(), "pos = -1"), "pos -1: %s", qmoe_last_error());
  qmoe_call_router_topk(&c, 16, 4, 5, NULL, NULL, NULL, NULL);
  CHECK(qmoe_stage_check(&c, need) == QMOE_EINVAL && strstr(qmoe_last_error(), "K = 5 experts per token exceeds E = 4"),
        "K > E: %s", qmoe_last_error());
  qmoe_call_attention(&c, 4, 2, 8, 5, 4, NULL, NULL, NULL, NULL);
  CHECK(qmoe_stage_check(&c, need) == QMOE_EINVAL && strstr(qmoe_last_error(), "n_kv = 5"), "n_kv > ctx: %s",
        qmoe_last_error());
  qmoe_call_add(&c, 0, NULL, NULL, NULL);
  CHECK(qmoe_stage_check(&c, need) == QMOE_EINVAL && strstr(qmoe_last_error(), "n = 0"), "n 0: %s", qmoe_last_error());
}

int main(void) {
  t_seed();
  RUN(test_enum_matches_contracts);
  RUN(test_shapes_match_reference);
  RUN(test_builders);
  RUN(test_rules);
  return T_DONE();
}
