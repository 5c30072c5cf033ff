/* model.c: the Qwen3-MoE model — GGUF qwen3moe metadata and tensors checked into a config and a weight
 * table, a buffer plan allocated once, and the forward of one position as a loop of typed stage calls on any
 * backend (the backend is an argument), with a named trace hook after each stage. docs/model.md. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "backend.h"
#include "qmoe.h"
#include "stage_table.h"
#include "trace_points.h"

#define ARCH "qwen3moe"

/* ---- config ------------------------------------------------------------------------------------------ */

/* A required positive integer key, at most MAX. */
static int get_int(const qmoe_gguf *f, const char *key, int64_t max, int64_t *out) {
  if (qmoe_gguf_find_key(f, key) < 0) {
    qmoe_set_error("%s: metadata key '%s' is missing (a qwen3moe file must set it; qmoe never guesses it)",
                   qmoe_gguf_path(f), key);
    return QMOE_EFORMAT;
  }
  int64_t v;
  if (qmoe_gguf_get_i64(f, key, &v)) return QMOE_EFORMAT; /* message names the file, key and types */
  if (v < 1 || v > max) {
    qmoe_set_error("%s: metadata key '%s' is %lld; expected 1..%lld", qmoe_gguf_path(f), key, (long long)v,
                   (long long)max);
    return QMOE_EFORMAT;
  }
  *out = v;
  return 0;
}

/* A required finite float key in (lo, hi). */
static int get_float(const qmoe_gguf *f, const char *key, double lo, double hi, double *out) {
  if (qmoe_gguf_find_key(f, key) < 0) {
    qmoe_set_error("%s: metadata key '%s' is missing (a qwen3moe file must set it; qmoe never guesses it)",
                   qmoe_gguf_path(f), key);
    return QMOE_EFORMAT;
  }
  double v;
  if (qmoe_gguf_get_f64(f, key, &v)) return QMOE_EFORMAT;
  if (!isfinite(v) || !(v > lo) || !(v < hi)) {
    qmoe_set_error("%s: metadata key '%s' is %g; expected a finite value in (%g, %g)", qmoe_gguf_path(f), key, v,
                   lo, hi);
    return QMOE_EFORMAT;
  }
  *out = v;
  return 0;
}

static int read_config(const qmoe_gguf *f, qmoe_model_config *c) {
  const char *path = qmoe_gguf_path(f);
  const char *arch;
  uint64_t len;
  if (qmoe_gguf_find_key(f, "general.architecture") < 0) {
    qmoe_set_error("%s: metadata key 'general.architecture' is missing (expected \"" ARCH "\")", path);
    return QMOE_EFORMAT;
  }
  if (qmoe_gguf_get_str(f, "general.architecture", &arch, &len)) return QMOE_EFORMAT;
  if (len != strlen(ARCH) || memcmp(arch, ARCH, len)) {
    qmoe_set_error("%s: general.architecture is \"%.*s\"; qmoe runs only \"" ARCH "\" (Qwen3-MoE) models", path,
                   (int)(len > 64 ? 64 : len), arch);
    return QMOE_EUNSUPPORTED;
  }
  memset(c, 0, sizeof *c);
  int64_t key_len, val_len;
  int rc;
  if ((rc = get_int(f, ARCH ".block_count", 4096, &c->n_layers)) ||
      (rc = get_int(f, ARCH ".context_length", (int64_t)1 << 24, &c->n_ctx_train)) ||
      (rc = get_int(f, ARCH ".embedding_length", (int64_t)1 << 20, &c->n_embd)) ||
      (rc = get_int(f, ARCH ".attention.head_count", 4096, &c->n_head)) ||
      (rc = get_int(f, ARCH ".attention.head_count_kv", 4096, &c->n_head_kv)) ||
      (rc = get_int(f, ARCH ".attention.key_length", 4096, &key_len)) ||
      (rc = get_int(f, ARCH ".attention.value_length", 4096, &val_len)) ||
      (rc = get_int(f, ARCH ".expert_count", 65536, &c->n_expert)) ||
      (rc = get_int(f, ARCH ".expert_used_count", 65536, &c->n_expert_used)) ||
      (rc = get_int(f, ARCH ".expert_feed_forward_length", (int64_t)1 << 20, &c->expert_ff)) ||
      (rc = get_float(f, ARCH ".rope.freq_base", 1.0, 1e12, &c->rope_theta)) ||
      (rc = get_float(f, ARCH ".attention.layer_norm_rms_epsilon", 0.0, 1.0, &c->rms_eps)))
    return rc;
  if (key_len != val_len) {
    qmoe_set_error("%s: " ARCH ".attention.key_length (%lld) differs from value_length (%lld); the attention "
                   "stage needs one head dimension", path, (long long)key_len, (long long)val_len);
    return QMOE_EUNSUPPORTED;
  }
  if (key_len % 2) {
    qmoe_set_error("%s: " ARCH ".attention.key_length is %lld; NEOX RoPE needs an even head dimension", path,
                   (long long)key_len);
    return QMOE_EFORMAT;
  }
  c->head_dim = key_len;
  if (c->n_head % c->n_head_kv) {
    qmoe_set_error("%s: " ARCH ".attention.head_count (%lld) is not a multiple of head_count_kv (%lld)", path,
                   (long long)c->n_head, (long long)c->n_head_kv);
    return QMOE_EFORMAT;
  }
  if (c->n_expert_used > c->n_expert) {
    qmoe_set_error("%s: " ARCH ".expert_used_count (%lld) exceeds expert_count (%lld)", path,
                   (long long)c->n_expert_used, (long long)c->n_expert);
    return QMOE_EFORMAT;
  }
  const qmoe_gguf_tensor *emb = qmoe_gguf_find_tensor(f, "token_embd.weight");
  if (!emb) {
    qmoe_set_error("%s: tensor 'token_embd.weight' is missing (the vocabulary size is its row count)", path);
    return QMOE_EFORMAT;
  }
  c->n_vocab = emb->n_dims == 2 ? emb->ne[1] : 0;
  if (c->n_vocab < 1 || c->n_vocab > INT32_MAX) {
    qmoe_set_error("%s: tensor 'token_embd.weight' must be 2-D [embedding_length, vocab] with 1..%d rows", path,
                   INT32_MAX);
    return QMOE_EFORMAT;
  }
  return 0;
}

/* ---- weight table ------------------------------------------------------------------------------------ */

/* What a tensor's qtype must support: F32 only (norms, router), a matvec kernel, the MoE kernels, or the
 * embed_rows kernel (the token embedding, read on the device). */
typedef enum { W_F32, W_MATVEC, W_EXPERT_GATE_UP, W_EXPERT_DOWN, W_EMBED } wkind;

typedef struct {
  const qmoe_gguf_tensor *t;
  qmoe_buffer *buf;
} qmoe_weight;

typedef struct {
  qmoe_weight attn_norm, q, k, v, o, q_norm, k_norm, ffn_norm, router, gate, up, down;
} qmoe_layer;

static const char *shape_str(int n, const int64_t *ne, char *buf, size_t cap) {
  int k = snprintf(buf, cap, "[");
  for (int i = 0; i < n && k > 0 && (size_t)k < cap; i++)
    k += snprintf(buf + k, cap - (size_t)k, "%s%lld", i ? ", " : "", (long long)ne[i]);
  if (k > 0 && (size_t)k < cap) snprintf(buf + k, cap - (size_t)k, "]");
  return buf;
}

/* Finds NAME and checks its shape (N dims of NE, innermost first) and qtype (KIND). DIMS describes NE in
 * words for the message. */
static int want(const qmoe_gguf *f, const char *name, int n, const int64_t *ne, const char *dims, wkind kind,
                const qmoe_gguf_tensor **out) {
  const char *path = qmoe_gguf_path(f);
  const qmoe_gguf_tensor *t = qmoe_gguf_find_tensor(f, name);
  char a[96], b[96];
  if (!t) {
    qmoe_set_error("%s: tensor '%s' is missing; expected %s %s", path, name, shape_str(n, ne, a, sizeof a), dims);
    return QMOE_EFORMAT;
  }
  int same = t->n_dims == n;
  for (int i = 0; same && i < n; i++) same = t->ne[i] == ne[i];
  if (!same) {
    qmoe_set_error("%s: tensor '%s' has shape %s; expected %s %s", path, name, shape_str(t->n_dims, t->ne, a, sizeof a),
                   shape_str(n, ne, b, sizeof b), dims);
    return QMOE_EFORMAT;
  }
  const qmoe_qtype_info *qt = qmoe_qtype_by_id(t->type);
  const char *need = NULL;
  if (kind == W_F32) {
    if (t->type != 0) need = "F32";
  } else if (!qt || qmoe_qtype_row_bytes(qt, t->ne[0]) < 0) {
    need = "a qtype qmoe decodes, whose block divides the row length";
  } else {
    qmoe_stage st = kind == W_MATVEC ? QMOE_STAGE_MATVEC
                    : kind == W_EXPERT_GATE_UP ? QMOE_STAGE_MOE_GATE_UP_SWIGLU
                    : kind == W_EXPERT_DOWN ? QMOE_STAGE_MOE_DOWN
                    : kind == W_EMBED ? QMOE_STAGE_EMBED_ROWS : QMOE_STAGE_COUNT;
    if (st != QMOE_STAGE_COUNT && !qmoe_stage_has_qtype(qmoe_stage_info_get(st), t->type))
      need = "a qtype the stage contracts list";
  }
  if (need) {
    qmoe_set_error("%s: tensor '%s' has type %s; expected %s", path, name, t->type_name, need);
    return kind == W_F32 ? QMOE_EFORMAT : QMOE_EUNSUPPORTED;
  }
  *out = t;
  return 0;
}

/* A dense or shared-expert FFN tensor in a MoE layer is an error: its weights would be silently ignored. */
static int forbid(const qmoe_gguf *f, int64_t l, const char *what) {
  char name[96];
  snprintf(name, sizeof name, "blk.%lld.%s.weight", (long long)l, what);
  if (!qmoe_gguf_find_tensor(f, name)) return 0;
  qmoe_set_error("%s: tensor '%s' is present, but every qwen3moe layer is a MoE layer (router ffn_gate_inp and "
                 "experts ffn_*_exps) with no dense or shared-expert FFN; found a %s tensor in layer %lld",
                 qmoe_gguf_path(f), name, what, (long long)l);
  return QMOE_EFORMAT;
}

typedef struct {
  const qmoe_gguf_tensor *embd, *out_norm, *output;
  qmoe_layer *layers; /* n_layers, only .t set */
} weight_table;

static int check_tensors(const qmoe_gguf *f, const qmoe_model_config *c, weight_table *w) {
  int64_t H = c->n_embd, D = c->head_dim, nq = c->n_head * D, nkv = c->n_head_kv * D, E = c->n_expert;
  int64_t F = c->expert_ff, V = c->n_vocab;
  int rc;
  if ((rc = want(f, "token_embd.weight", 2, (int64_t[]){H, V}, "(embedding_length, vocab)", W_EMBED, &w->embd)) ||
      (rc = want(f, "output_norm.weight", 1, (int64_t[]){H}, "(embedding_length)", W_F32, &w->out_norm)))
    return rc;
  if (!qmoe_gguf_find_tensor(f, "output.weight")) {
    qmoe_set_error("%s: tensor 'output.weight' (lm_head) is missing; qwen3moe has untied embeddings",
                   qmoe_gguf_path(f));
    return QMOE_EFORMAT;
  }
  if ((rc = want(f, "output.weight", 2, (int64_t[]){H, V}, "(embedding_length, vocab)", W_MATVEC, &w->output)))
    return rc;
  for (int64_t l = 0; l < c->n_layers; l++) {
    qmoe_layer *L = &w->layers[l];
    char n[96];
#define WANT(field, suffix, words, kind, ...)                                                        \
  (snprintf(n, sizeof n, "blk.%lld." suffix ".weight", (long long)l),                              \
   want(f, n, (int)(sizeof((int64_t[]){__VA_ARGS__}) / sizeof(int64_t)), (int64_t[]){__VA_ARGS__}, words, kind, \
        &L->field.t))
    if ((rc = WANT(attn_norm, "attn_norm", "(embedding_length)", W_F32, H)) ||
        (rc = WANT(q, "attn_q", "(embedding_length, head_count*key_length)", W_MATVEC, H, nq)) ||
        (rc = WANT(k, "attn_k", "(embedding_length, head_count_kv*key_length)", W_MATVEC, H, nkv)) ||
        (rc = WANT(v, "attn_v", "(embedding_length, head_count_kv*value_length)", W_MATVEC, H, nkv)) ||
        (rc = WANT(o, "attn_output", "(head_count*value_length, embedding_length)", W_MATVEC, nq, H)) ||
        (rc = WANT(q_norm, "attn_q_norm", "(key_length)", W_F32, D)) ||
        (rc = WANT(k_norm, "attn_k_norm", "(key_length)", W_F32, D)) ||
        (rc = WANT(ffn_norm, "ffn_norm", "(embedding_length)", W_F32, H)) ||
        (rc = WANT(router, "ffn_gate_inp", "(embedding_length, expert_count)", W_F32, H, E)) ||
        (rc = WANT(gate, "ffn_gate_exps", "(embedding_length, expert_feed_forward_length, expert_count)",
                   W_EXPERT_GATE_UP, H, F, E)) ||
        (rc = WANT(up, "ffn_up_exps", "(embedding_length, expert_feed_forward_length, expert_count)",
                   W_EXPERT_GATE_UP, H, F, E)) ||
        (rc = WANT(down, "ffn_down_exps", "(expert_feed_forward_length, embedding_length, expert_count)",
                   W_EXPERT_DOWN, F, H, E)))
      return rc;
#undef WANT
    if (L->up.t->type != L->gate.t->type) {
      qmoe_set_error("%s: tensor 'blk.%lld.ffn_up_exps.weight' has type %s but ffn_gate_exps is %s; the "
                     "moe_gate_up_swiglu stage takes one qtype for both", qmoe_gguf_path(f), (long long)l,
                     L->up.t->type_name, L->gate.t->type_name);
      return QMOE_EUNSUPPORTED;
    }
    static const char *const dense[] = { "ffn_gate", "ffn_up", "ffn_down", "ffn_gate_shexp", "ffn_up_shexp",
                                         "ffn_down_shexp" };
    for (size_t i = 0; i < sizeof dense / sizeof dense[0]; i++)
      if ((rc = forbid(f, l, dense[i]))) return rc;
  }
  char extra[64];
  snprintf(extra, sizeof extra, "blk.%lld.attn_norm.weight", (long long)c->n_layers);
  if (qmoe_gguf_find_tensor(f, extra)) {
    qmoe_set_error("%s: tensor '%s' is present but " ARCH ".block_count is %lld", qmoe_gguf_path(f), extra,
                   (long long)c->n_layers);
    return QMOE_EFORMAT;
  }
  return 0;
}

int qmoe_model_check(const qmoe_gguf *f, qmoe_model_config *cfg) {
  int rc = read_config(f, cfg);
  if (rc) return rc;
  weight_table w = {0};
  w.layers = calloc((size_t)cfg->n_layers, sizeof *w.layers);
  if (!w.layers) {
    qmoe_set_error("out of host memory");
    return QMOE_ENOMEM;
  }
  rc = check_tensors(f, cfg, &w);
  free(w.layers);
  return rc;
}

/* ---- the model: config, weight table, buffer plan ---------------------------------------------------- */

struct qmoe_model {
  qmoe_gguf *file;
  qmoe_backend *be;
  qmoe_model_config c;
  int64_t n_ctx;
  qmoe_acc acc;
  /* weights */
  qmoe_weight embd, out_norm, output;
  qmoe_layer *layers;
  /* run state: activations (f32 unless noted), allocated once */
  qmoe_buffer *h, *xn, *q, *o, *t, *ids /* i32 */, *w, *hb, *logits, *idx /* i32 */, *rlog;
  qmoe_buffer *kc, *vc; /* KV cache: [layer][ctx][kv_heads][head_dim] */
  /* Token ids (i32, one per cache position): a prompt is uploaded in one transfer and embed_rows reads
   * each id on the device. The argmax of position p goes into slot p + 1 (idx at the cache's last
   * position), so the next position reads the decoded token where argmax left it, with no upload — and
   * through the same buffer as a prompt, so prefill and decode positions replay one graph. */
  qmoe_buffer *tok;
  int32_t idx_token;      /* the token argmax left in slot idx_pos of tok (-1: none) */
  int64_t idx_pos;
  qmoe_buffer *arg_buf;   /* where the last outputs() put the argmax */
  size_t arg_off;
  int no_graph;      /* QMOE_NO_GRAPH=1: enqueue stage by stage even where the backend offers graphs */
  /* Prefill reads a prompt CHUNK tokens per stage call (the contracts' `tokens`: bit for bit the one-token
   * calls, so the outputs do not depend on it); the activation buffers hold chunk_cap tokens. */
  int64_t chunk, chunk_cap;
  qmoe_call_fn call_fn; /* qmoe_model_calls: calls go here instead of the backend */
  void *call_user;
  int64_t call_layer;
  qmoe_model_memory mem;
  /* tracing */
  qmoe_trace_fn trace_fn;
  void *trace_user;
  unsigned char trace_points[QMOE_TP_COUNT];
  unsigned char *trace_layers;
  void *trace_host;
  int64_t trace_dims[QMOE_TRACE_DIM_COUNT];
};

static void model_dims(const qmoe_model_config *c, int64_t *d) {
  d[QMOE_TRACE_DIM_HIDDEN] = c->n_embd, d[QMOE_TRACE_DIM_HEADS] = c->n_head;
  d[QMOE_TRACE_DIM_KV_HEADS] = c->n_head_kv, d[QMOE_TRACE_DIM_HEAD_DIM] = c->head_dim;
  d[QMOE_TRACE_DIM_EXPERTS] = c->n_expert, d[QMOE_TRACE_DIM_EXPERTS_USED] = c->n_expert_used;
  d[QMOE_TRACE_DIM_EXPERT_FF] = c->expert_ff, d[QMOE_TRACE_DIM_VOCAB] = c->n_vocab;
}

/* The activation buffers: name, where it lives in the model, bytes. One list drives the plan, the
 * allocation and the report. */
typedef struct { const char *name; size_t slot; uint64_t bytes; } buf_plan;

static int plan_buffers(const qmoe_model *m, buf_plan *p) {
  const qmoe_model_config *c = &m->c;
  uint64_t f = 4 * (uint64_t)m->chunk_cap, H = (uint64_t)c->n_embd, nq = (uint64_t)(c->n_head * c->head_dim);
  uint64_t nkv = (uint64_t)(c->n_head_kv * c->head_dim), K = (uint64_t)c->n_expert_used;
  uint64_t kv = (uint64_t)c->n_layers * (uint64_t)m->n_ctx * nkv * 4;
  int n = 0;
#define PLAN(field, b) p[n++] = (buf_plan){ #field, offsetof(qmoe_model, field), (b) }
  /* f: 4 bytes per token of a chunk */
  PLAN(h, H * f); PLAN(xn, H * f); PLAN(q, nq * f); PLAN(o, nq * f);
  PLAN(t, (H > nkv ? H : nkv) * f); /* t: attn_output and the MoE out, and before them the raw k */
  PLAN(ids, K * f); PLAN(w, K * f); PLAN(hb, K * (uint64_t)c->expert_ff * f);
  PLAN(logits, (uint64_t)c->n_vocab * 4); PLAN(idx, 4); PLAN(rlog, (uint64_t)c->n_expert * 4);
  PLAN(tok, (uint64_t)m->n_ctx * 4);
  PLAN(kc, kv); PLAN(vc, kv);
#undef PLAN
  return n;
}

static qmoe_buffer **slot(qmoe_model *m, const buf_plan *p) { return (qmoe_buffer **)((char *)m + p->slot); }

static void for_each_weight(qmoe_model *m, void (*fn)(qmoe_model *, qmoe_weight *, void *), void *u) {
  fn(m, &m->embd, u), fn(m, &m->out_norm, u), fn(m, &m->output, u);
  for (int64_t l = 0; l < m->c.n_layers; l++) {
    qmoe_layer *L = &m->layers[l];
    qmoe_weight *ws[] = { &L->attn_norm, &L->q, &L->k, &L->v, &L->o, &L->q_norm, &L->k_norm, &L->ffn_norm,
                          &L->router, &L->gate, &L->up, &L->down };
    for (size_t i = 0; i < sizeof ws / sizeof ws[0]; i++) fn(m, ws[i], u);
  }
}

static void add_bytes(qmoe_model *m, qmoe_weight *w, void *u) { *(uint64_t *)u += w->t->nbytes; }
static void free_weight(qmoe_model *m, qmoe_weight *w, void *u) {
  if (w->buf) m->be->free_buf(m->be, w->buf);
  w->buf = NULL;
}

typedef struct { int rc; uint64_t done; } upload_state;
static void upload_weight(qmoe_model *m, qmoe_weight *w, void *u) {
  upload_state *s = u;
  if (s->rc) return;
  if ((s->rc = m->be->alloc(m->be, (size_t)w->t->nbytes, &w->buf))) {
    qmoe_set_error("%s: cannot allocate %llu bytes on %s for tensor '%s' (%llu of %llu weight bytes placed; the "
                   "model needs weights %llu + KV cache %llu + workspace %llu bytes): %s",
                   qmoe_gguf_path(m->file), (unsigned long long)w->t->nbytes, m->be->name, w->t->name,
                   (unsigned long long)s->done, (unsigned long long)m->mem.weights,
                   (unsigned long long)m->mem.weights, (unsigned long long)m->mem.kv_cache,
                   (unsigned long long)m->mem.workspace, qmoe_last_error());
    return;
  }
  if ((s->rc = m->be->upload(m->be, w->buf, 0, w->t->data, (size_t)w->t->nbytes))) return;
  s->done += w->t->nbytes;
}

void qmoe_model_free(qmoe_model *m) {
  if (!m) return;
  if (m->layers) for_each_weight(m, free_weight, NULL);
  buf_plan p[32];
  int n = plan_buffers(m, p);
  for (int i = 0; i < n; i++)
    if (*slot(m, &p[i])) m->be->free_buf(m->be, *slot(m, &p[i]));
  free(m->layers);
  free(m->trace_layers);
  free(m->trace_host);
  qmoe_gguf_close(m->file);
  free(m);
}

int qmoe_model_load(const char *path, qmoe_backend *be, int64_t n_ctx, qmoe_model **out) {
  *out = NULL;
  qmoe_model *m = calloc(1, sizeof *m);
  if (!m) {
    qmoe_set_error("out of host memory");
    return QMOE_ENOMEM;
  }
  m->be = be;
  int rc = qmoe_gguf_open(path, &m->file);
  if (rc) {
    free(m);
    return rc;
  }
  if ((rc = read_config(m->file, &m->c))) goto fail;
  weight_table wt = { .layers = calloc((size_t)m->c.n_layers, sizeof(qmoe_layer)) };
  m->layers = wt.layers;
  if (!m->layers) {
    qmoe_set_error("out of host memory");
    rc = QMOE_ENOMEM;
    goto fail;
  }
  if ((rc = check_tensors(m->file, &m->c, &wt))) goto fail;
  m->embd.t = wt.embd, m->out_norm.t = wt.out_norm, m->output.t = wt.output;
  if (n_ctx < 1 || n_ctx > m->c.n_ctx_train) {
    qmoe_set_error("%s: a context of %lld tokens is outside what the model allows (1..%lld, " ARCH
                   ".context_length)", path, (long long)n_ctx, (long long)m->c.n_ctx_train);
    rc = QMOE_EINVAL;
    goto fail;
  }
  m->n_ctx = n_ctx;
  m->idx_token = -1, m->idx_pos = -1;
  m->call_layer = -1;
  m->acc = QMOE_ACC_F32;
  const char *ng = getenv("QMOE_NO_GRAPH");
  m->no_graph = ng && ng[0] && strcmp(ng, "0") != 0;
  /* Prefill chunk: QMOE_PREFILL_CHUNK, else the backend's: CUDA computes a chunk's tokens together (one read
   * of each weight for all of them); the CPU reference loops over them, which keeps the batched path tested;
   * Vulkan's shaders take one token per dispatch, so a prompt runs one position graph after another. */
  m->chunk = !strcmp(be->name, "cuda") ? 512 : !strcmp(be->name, "cpu") ? 64 : 1;
  const char *pc = getenv("QMOE_PREFILL_CHUNK");
  if (pc && pc[0]) {
    char *end;
    long long v = strtoll(pc, &end, 10);
    if (*end || v < 1 || v > 4096) {
      qmoe_set_error("QMOE_PREFILL_CHUNK='%s' is not a number of tokens in 1..4096", pc);
      rc = QMOE_EINVAL;
      goto fail;
    }
    m->chunk = v;
  }
  if (m->chunk > n_ctx) m->chunk = n_ctx;
  m->chunk_cap = m->chunk;
  model_dims(&m->c, m->trace_dims);
  /* The memory plan, complete before the first allocation. */
  for_each_weight(m, add_bytes, &m->mem.weights);
  buf_plan p[32];
  int np = plan_buffers(m, p);
  for (int i = 0; i < np; i++) {
    if (!strcmp(p[i].name, "kc") || !strcmp(p[i].name, "vc")) m->mem.kv_cache += p[i].bytes;
    else m->mem.workspace += p[i].bytes;
  }
  uint64_t max_trace = 0;
  for (int i = 0; i < QMOE_TP_COUNT; i++) {
    uint64_t e = (uint64_t)qmoe_trace_point_elements(i, m->trace_dims) * 4;
    if (e > max_trace) max_trace = e;
  }
  m->trace_host = malloc((size_t)max_trace);
  m->trace_layers = calloc((size_t)m->c.n_layers, 1);
  if (!m->trace_host || !m->trace_layers) {
    qmoe_set_error("out of host memory");
    rc = QMOE_ENOMEM;
    goto fail;
  }
  for (int i = 0; i < np; i++) {
    if ((rc = be->alloc(be, (size_t)p[i].bytes, slot(m, &p[i])))) {
      qmoe_set_error("%s: cannot allocate the %s buffer (%llu bytes) on %s; the model needs weights %llu + KV "
                     "cache %llu (%lld tokens) + workspace %llu bytes: %s", path, p[i].name,
                     (unsigned long long)p[i].bytes, be->name, (unsigned long long)m->mem.weights,
                     (unsigned long long)m->mem.kv_cache, (long long)n_ctx, (unsigned long long)m->mem.workspace,
                     qmoe_last_error());
      goto fail;
    }
  }
  upload_state us = {0};
  for_each_weight(m, upload_weight, &us);
  if ((rc = us.rc)) goto fail;
  if ((rc = be->sync(be))) goto fail;
  *out = m;
  return 0;
fail:
  qmoe_model_free(m);
  return rc;
}

const qmoe_model_config *qmoe_model_config_of(const qmoe_model *m) { return &m->c; }
const qmoe_gguf *qmoe_model_gguf(const qmoe_model *m) { return m->file; }
qmoe_backend *qmoe_model_backend(const qmoe_model *m) { return m->be; }
int64_t qmoe_model_n_ctx(const qmoe_model *m) { return m->n_ctx; }
void qmoe_model_memory_of(const qmoe_model *m, qmoe_model_memory *out) { *out = m->mem; }

uint64_t qmoe_model_bytes_per_token(const qmoe_model *m) {
  const qmoe_model_config *c = &m->c;
  uint64_t b = m->out_norm.t->nbytes + m->output.t->nbytes + m->embd.t->row_bytes;
  for (int64_t l = 0; l < c->n_layers; l++) {
    const qmoe_layer *L = &m->layers[l];
    b += L->attn_norm.t->nbytes + L->q.t->nbytes + L->k.t->nbytes + L->v.t->nbytes + L->o.t->nbytes +
         L->q_norm.t->nbytes + L->k_norm.t->nbytes + L->ffn_norm.t->nbytes + L->router.t->nbytes;
    /* One expert's slice of each stacked tensor, times the experts used. */
    uint64_t per = (L->gate.t->nbytes + L->up.t->nbytes + L->down.t->nbytes) / (uint64_t)c->n_expert;
    b += per * (uint64_t)c->n_expert_used;
  }
  return b;
}

int qmoe_model_set_acc(qmoe_model *m, int acc) {
  if (acc < 0 || acc >= QMOE_ACC_COUNT) {
    qmoe_set_error("accumulator %d is none of f32 (0), f64 (1), q8 (2)", acc);
    return QMOE_EINVAL;
  }
  m->acc = (qmoe_acc)acc;
  return 0;
}

int qmoe_model_set_trace(qmoe_model *m, const unsigned char *points, const unsigned char *layers, qmoe_trace_fn fn,
                         void *user) {
  m->trace_fn = fn;
  m->trace_user = user;
  memset(m->trace_points, 0, sizeof m->trace_points);
  memset(m->trace_layers, 0, (size_t)m->c.n_layers);
  if (fn) {
    memcpy(m->trace_points, points, sizeof m->trace_points);
    memcpy(m->trace_layers, layers, (size_t)m->c.n_layers);
  }
  return 0;
}

int qmoe_model_sync(qmoe_model *m) { return m->be->sync(m->be); }

int qmoe_model_zero_cache(qmoe_model *m, int64_t n) {
  if (n < 0 || n > m->n_ctx) {
    qmoe_set_error("cannot zero %lld cache rows: the KV cache holds %lld (--ctx)", (long long)n, (long long)m->n_ctx);
    return QMOE_EINVAL;
  }
  const size_t row = (size_t)(m->c.n_head_kv * m->c.head_dim) * sizeof(float), chunk_max = (size_t)16 << 20;
  const size_t bytes = (size_t)n * row;
  if (bytes == 0) return 0;
  const size_t chunk = bytes < chunk_max ? bytes : chunk_max;
  void *zero = calloc(1, chunk);
  if (!zero) {
    qmoe_set_error("out of host memory (%zu bytes of zeros for the KV cache)", chunk);
    return QMOE_ENOMEM;
  }
  int rc = 0;
  for (int64_t l = 0; !rc && l < m->c.n_layers; l++) {
    const size_t base = (size_t)l * (size_t)m->n_ctx * row;
    for (size_t done = 0; !rc && done < bytes; done += chunk) {
      size_t k = bytes - done < chunk ? bytes - done : chunk;
      rc = m->be->upload(m->be, m->kc, base + done, zero, k);
      if (!rc) rc = m->be->upload(m->be, m->vc, base + done, zero, k);
    }
  }
  if (!rc) rc = m->be->sync(m->be); /* the uploads read ZERO */
  free(zero);
  return rc;
}

/* ---- the forward ------------------------------------------------------------------------------------- */

static int tracing(const qmoe_model *m, int point, int64_t layer) {
  return m->trace_fn && m->trace_points[point] && (layer < 0 || m->trace_layers[layer]);
}

/* The trace hook after a stage: when (POINT, LAYER) is selected, downloads BUF and hands it on. */
static int trace_at(qmoe_model *m, int point, int64_t layer, int64_t pos, qmoe_buffer *buf, size_t off) {
  if (!tracing(m, point, layer)) return 0;
  int64_t n = qmoe_trace_point_elements(point, m->trace_dims);
  int rc = m->be->download(m->be, buf, off, m->trace_host, (size_t)n * 4);
  if (rc) return rc;
  return m->trace_fn(m->trace_user, point, layer, pos, m->trace_host, n);
}

static int trace(qmoe_model *m, int point, int64_t layer, int64_t pos, qmoe_buffer *buf) {
  return trace_at(m, point, layer, pos, buf, 0);
}

/* The call's label for qmoe_model_calls: the stage, then the kind of its weight ("blk.3.attn_q.weight" ->
 * "attn_q"). */
static void call_label(const qmoe_stage_call *c, const qmoe_weight *w, char *out, size_t cap) {
  const char *stage = qmoe_stage_info_get(c->stage)->name;
  if (!w) {
    snprintf(out, cap, "%s", stage);
    return;
  }
  const char *n = w->t->name, *dot = strchr(n, '.');
  if (!strncmp(n, "blk.", 4) && dot && (dot = strchr(dot + 1, '.'))) n = dot + 1;
  const char *end = strstr(n, ".weight");
  snprintf(out, cap, "%s %.*s", stage, (int)(end ? end - n : (ptrdiff_t)strlen(n)), n);
}

/* Weight bytes a call reads: the whole tensor, or K of its E experts' slices. */
static uint64_t call_weight_bytes(const qmoe_model *m, const qmoe_stage_call *c, const qmoe_weight *w) {
  if (!w) return 0;
  if (c->stage == QMOE_STAGE_MOE_GATE_UP_SWIGLU) /* gate and up: w is gate, up has the same qtype and shape */
    return 2 * w->t->nbytes / (uint64_t)m->c.n_expert * (uint64_t)m->c.n_expert_used;
  if (c->stage == QMOE_STAGE_MOE_DOWN) return w->t->nbytes / (uint64_t)m->c.n_expert * (uint64_t)m->c.n_expert_used;
  if (c->stage == QMOE_STAGE_EMBED_ROWS) return w->t->row_bytes;
  return w->t->nbytes;
}

/* Runs one stage call with the model's accumulator and the weight's qtype and name. q8 exists only for the
 * row stages of integer block formats (docs/q8.md): any other (stage, qtype) of a q8 model runs f32. */
static int run(qmoe_model *m, qmoe_stage_call *c, const qmoe_weight *w) {
  c->acc = m->acc;
  if (w) c->qtype = w->t->type, c->tensor = w->t->name;
  if (c->acc == QMOE_ACC_Q8 && !qmoe_stage_has_acc(qmoe_stage_info_get(c->stage), c->qtype, QMOE_ACC_Q8))
    c->acc = QMOE_ACC_F32;
  if (m->call_fn) {
    char label[96];
    call_label(c, w, label, sizeof label);
    return m->call_fn(m->call_user, label, m->call_layer, call_weight_bytes(m, c, w), c);
  }
  return m->be->run(m->be, c);
}

/* The embedding of the token whose id is the i32 at byte OFF of IDS: h = row id of token_embd, decoded on
 * the device by embed_rows (the id never has to come back to the host). */
static int embed(qmoe_model *m, qmoe_buffer *ids, size_t off, int64_t T) {
  qmoe_stage_call s;
  qmoe_call_embed_rows(&s, m->c.n_embd, m->c.n_vocab, m->embd.buf, ids, m->h);
  s.off[QMOE_B_EMBED_ROWS_ID] = off;
  s.tokens = T;
  return run(m, &s, &m->embd);
}

/* Layer L for the T tokens at positions POS..POS+T-1 (T > 1: a prefill chunk; every call carries the T
 * tokens, which by the stage contracts is T one-token calls in order, so the chunk computes what T decode
 * positions would, bit for bit). */
static int layer_forward(qmoe_model *m, int64_t l, int64_t pos, int64_t T) {
  const qmoe_model_config *c = &m->c;
  const qmoe_layer *L = &m->layers[l];
  int64_t H = c->n_embd, nh = c->n_head, nkv = c->n_head_kv, D = c->head_dim, E = c->n_expert;
  int64_t K = c->n_expert_used, F = c->expert_ff;
  size_t cache_off = (size_t)l * (size_t)m->n_ctx * (size_t)(nkv * D) * sizeof(float);
  qmoe_stage_call s;
  int rc;
#define RUN(w) (s.tokens = T, run(m, &s, w))
#define STEP(call, w) if ((rc = (call, RUN(w)))) return rc
#define TRACE(point, buf) if ((rc = trace(m, point, l, pos, buf))) return rc
  /* xn = attn_norm(h): here for layer 0; for the others the previous layer's last add computed it (below). */
  if (l == 0) STEP(qmoe_call_rmsnorm(&s, H, c->rms_eps, m->h, L->attn_norm.buf, m->xn), NULL);
  TRACE(QMOE_TP_ATTN_NORM, m->xn);
  /* Three lanes (backend.branch: a backend may run them at once): q, k and v. o holds the raw q projection
   * until attention writes its output there, t the raw k until attn_output does. qk_norm then RoPE: one
   * stage (qk_norm_rope), bit for bit the two. The three projections come first, then the two qk_norm_rope:
   * a backend that orders calls by barriers (Vulkan) needs one between them, not one per step. These
   * positions' k and v go straight into rows pos.. of the layer's caches (no kv_store copy): a token's slice
   * of k and v is one cache row. */
#define BRANCH(lane) if (m->be->branch && (rc = m->be->branch(m->be, lane))) return rc
  const size_t row_off = cache_off + (size_t)pos * (size_t)(nkv * D) * sizeof(float);
  BRANCH(0);
  STEP(qmoe_call_matvec(&s, nh * D, H, L->q.buf, m->xn, m->o), &L->q);
  BRANCH(1);
  STEP(qmoe_call_matvec(&s, nkv * D, H, L->k.buf, m->xn, m->t), &L->k);
  BRANCH(2);
  qmoe_call_matvec(&s, nkv * D, H, L->v.buf, m->xn, m->vc);
  s.off[QMOE_B_MATVEC_Y] = row_off;
  if ((rc = RUN(&L->v))) return rc;
  if ((rc = trace_at(m, QMOE_TP_VCUR, l, pos, m->vc, row_off))) return rc;
  BRANCH(0);
  STEP(qmoe_call_qk_norm_rope(&s, nh, D, pos, c->rms_eps, c->rope_theta, m->o, L->q_norm.buf, m->q), NULL);
  TRACE(QMOE_TP_QCUR, m->q);
  BRANCH(1);
  qmoe_call_qk_norm_rope(&s, nkv, D, pos, c->rms_eps, c->rope_theta, m->t, L->k_norm.buf, m->kc);
  s.off[QMOE_B_QK_NORM_ROPE_Y] = row_off;
  if ((rc = RUN(NULL))) return rc;
  if ((rc = trace_at(m, QMOE_TP_KCUR, l, pos, m->kc, row_off))) return rc;
  BRANCH(QMOE_BRANCH_JOIN);
#undef BRANCH
  /* token t attends to pos + t + 1 rows: its own and every earlier one, this chunk's included */
  qmoe_call_attention(&s, nh, nkv, D, pos + 1, m->n_ctx, m->q, m->kc, m->vc, m->o);
  s.off[QMOE_B_ATTENTION_KC] = s.off[QMOE_B_ATTENTION_VC] = cache_off;
  if ((rc = RUN(NULL))) return rc;
  TRACE(QMOE_TP_ATTN_OUT, m->o);
  STEP(qmoe_call_matvec(&s, H, nh * D, L->o.buf, m->o, m->t), &L->o);
  TRACE(QMOE_TP_ATTN_PROJ, m->t);
  /* h += attention; xn = ffn_norm(h): one stage (add_rmsnorm), bit for bit add then rmsnorm. */
  STEP(qmoe_call_add_rmsnorm(&s, H, c->rms_eps, m->h, m->t, L->ffn_norm.buf, m->h, m->xn), NULL);
  TRACE(QMOE_TP_FFN_INP, m->h);
  TRACE(QMOE_TP_FFN_NORM, m->xn);
  if (tracing(m, QMOE_TP_MOE_ROUTER, l)) { /* the logits router_topk keeps to itself, only when traced (T = 1) */
    STEP(qmoe_call_matvec(&s, E, H, L->router.buf, m->xn, m->rlog), &L->router);
    TRACE(QMOE_TP_MOE_ROUTER, m->rlog);
  }
  STEP(qmoe_call_router_topk(&s, H, E, K, L->router.buf, m->xn, m->ids, m->w), NULL);
  TRACE(QMOE_TP_FFN_MOE_TOPK, m->ids);
  TRACE(QMOE_TP_FFN_MOE_WEIGHTS, m->w);
  STEP(qmoe_call_moe_gate_up_swiglu(&s, H, F, E, K, L->gate.buf, L->up.buf, m->xn, m->ids, m->hb), &L->gate);
  TRACE(QMOE_TP_FFN_MOE_SWIGLU, m->hb);
  STEP(qmoe_call_moe_down(&s, H, F, E, K, L->down.buf, m->hb, m->ids, m->w, m->t), &L->down);
  TRACE(QMOE_TP_FFN_MOE_OUT, m->t);
  /* h += MoE; xn = the next layer's attn_norm(h), or after the last layer output_norm(h) (what outputs()
   * reads): one add_rmsnorm. */
  const qmoe_buffer *next_norm = l + 1 < c->n_layers ? m->layers[l + 1].attn_norm.buf : m->out_norm.buf;
  STEP(qmoe_call_add_rmsnorm(&s, H, c->rms_eps, m->h, m->t, (qmoe_buffer *)next_norm, m->h, m->xn), NULL);
  TRACE(QMOE_TP_L_OUT, m->h);
#undef RUN
#undef STEP
#undef TRACE
  return 0;
}

/* The output norm and lm_head at the last position, and the requested outputs. */
/* POS is the last position; X_OFF the byte offset of its row of xn (the chunk's last token). */
static int outputs(qmoe_model *m, int64_t pos, size_t x_off, int32_t *argmax, float *logits) {
  const qmoe_model_config *c = &m->c;
  int need_out = argmax || logits || tracing(m, QMOE_TP_RESULT_NORM, -1) || tracing(m, QMOE_TP_RESULT_OUTPUT, -1);
  if (!need_out) return 0;
  qmoe_stage_call s;
  int rc;
  /* xn = output_norm(h) already: the last layer's add_rmsnorm computed it. */
  if ((rc = trace(m, QMOE_TP_RESULT_NORM, -1, pos, m->xn))) return rc;
  qmoe_call_matvec(&s, c->n_vocab, c->n_embd, m->output.buf, m->xn, m->logits);
  s.off[QMOE_B_MATVEC_X] = x_off;
  if ((rc = run(m, &s, &m->output)) || (rc = trace(m, QMOE_TP_RESULT_OUTPUT, -1, pos, m->logits))) return rc;
  if (argmax) {
    m->arg_buf = pos + 1 < m->n_ctx ? m->tok : m->idx;
    m->arg_off = pos + 1 < m->n_ctx ? (size_t)(pos + 1) * 4 : 0;
    qmoe_call_argmax(&s, c->n_vocab, m->logits, m->arg_buf);
    s.off[QMOE_B_ARGMAX_IDX] = m->arg_off;
    if ((rc = run(m, &s, NULL))) return rc;
  }
  return 0;
}

/* What outputs() left on the device, brought back (after a graph has been submitted). */
static int fetch_outputs(qmoe_model *m, int32_t *argmax, float *logits) {
  int rc;
  if (argmax) {
    if ((rc = m->be->download(m->be, m->arg_buf, m->arg_off, argmax, sizeof *argmax))) return rc;
    m->idx_token = *argmax;
    m->idx_pos = m->arg_buf == m->tok ? (int64_t)(m->arg_off / 4) : -1;
  }
  if (logits && (rc = m->be->download(m->be, m->logits, 0, logits, (size_t)m->c.n_vocab * sizeof(float))))
    return rc;
  return 0;
}

/* Whether any trace point is selected (a trace point holds one position's values: positions run one by one). */
static int traced(const qmoe_model *m) {
  if (!m->trace_fn) return 0;
  for (int i = 0; i < QMOE_TP_COUNT; i++)
    if (m->trace_points[i]) return 1;
  return 0;
}

/* Whether position POS runs as one recorded graph: the backend offers graphs and no trace point would
 * download in the middle of the position. */
static int use_graph(const qmoe_model *m) {
  return m->be->graph_begin && m->be->graph_end && !m->no_graph && !traced(m);
}

/* T positions from POS: the embeddings of the T tokens from byte OFF of IDS, every layer, and (LAST) the
 * outputs of the last one, as one graph where the backend offers it. */
static int position(qmoe_model *m, qmoe_buffer *ids, size_t off, int64_t pos, int64_t T, int last, int32_t *argmax,
                    float *logits) {
  const int graph = use_graph(m);
  int rc;
  if (graph && (rc = m->be->graph_begin(m->be))) return rc;
  rc = embed(m, ids, off, T);
  if (!rc) rc = trace(m, QMOE_TP_INP_EMBD, -1, pos, m->h);
  for (int64_t l = 0; !rc && l < m->c.n_layers; l++) {
    m->call_layer = l;
    rc = layer_forward(m, l, pos, T);
  }
  m->call_layer = -1;
  /* Before the last position, the outputs run only when result_* are traced. */
  const int64_t lp = pos + T - 1;
  const size_t x_off = (size_t)(T - 1) * (size_t)m->c.n_embd * sizeof(float);
  if (!rc) rc = last ? outputs(m, lp, x_off, argmax, logits) : outputs(m, lp, x_off, NULL, NULL);
  if (graph) {
    int rc2 = m->be->graph_end(m->be, rc == 0);
    if (!rc) rc = rc2;
  }
  return rc;
}

int qmoe_model_prefill(qmoe_model *m, const int32_t *tokens, int64_t n, int64_t pos0, int32_t *argmax,
                       float *logits) {
  const qmoe_model_config *c = &m->c;
  if (n < 1 || pos0 < 0 || pos0 > m->n_ctx - n) {
    qmoe_set_error("positions %lld..%lld are outside the KV cache of %lld tokens (--ctx)", (long long)pos0,
                   (long long)(pos0 + n - 1), (long long)m->n_ctx);
    return QMOE_EINVAL;
  }
  for (int64_t i = 0; i < n; i++)
    if (tokens[i] < 0 || tokens[i] >= c->n_vocab) {
      qmoe_set_error("token id %ld (position %lld) is outside the vocabulary (0..%lld)", (long)tokens[i],
                     (long long)(pos0 + i), (long long)c->n_vocab - 1);
      return QMOE_EINVAL;
    }
  int rc = 0;
  /* A decoded token that argmax left in its slot is read there; anything else is uploaded once, all of it. */
  int in_place = n == 1 && m->idx_token >= 0 && tokens[0] == m->idx_token && pos0 == m->idx_pos;
  if (!in_place && (rc = m->be->upload(m->be, m->tok, (size_t)pos0 * 4, tokens, (size_t)n * 4))) return rc;
  m->idx_token = -1, m->idx_pos = -1;
  /* A chunk of tokens per graph; one position at a time while anything is traced (a trace point holds one
   * position's values). */
  const int64_t chunk = traced(m) ? 1 : m->chunk;
  for (int64_t i = 0; !rc && i < n; i += chunk) {
    const int64_t T = n - i < chunk ? n - i : chunk;
    rc = position(m, m->tok, (size_t)(pos0 + i) * 4, pos0 + i, T, i + T == n, argmax, logits);
  }
  if (rc) return rc;
  return fetch_outputs(m, argmax, logits);
}

int64_t qmoe_model_prefill_chunk(const qmoe_model *m) { return m->chunk; }

int qmoe_model_set_prefill_chunk(qmoe_model *m, int64_t n) {
  if (n < 1 || n > m->chunk_cap) {
    qmoe_set_error("a prefill chunk of %lld tokens is outside 1..%lld (the activation buffers hold %lld tokens: "
                   "QMOE_PREFILL_CHUNK at load)", (long long)n, (long long)m->chunk_cap, (long long)m->chunk_cap);
    return QMOE_EINVAL;
  }
  m->chunk = n;
  return 0;
}

int qmoe_model_calls(qmoe_model *m, int64_t pos, qmoe_call_fn fn, void *user) {
  if (pos < 0 || pos >= m->n_ctx) {
    qmoe_set_error("position %lld is outside the KV cache of %lld tokens (--ctx)", (long long)pos,
                   (long long)m->n_ctx);
    return QMOE_EINVAL;
  }
  /* No trace hook and no graph: every call goes to FN. */
  qmoe_trace_fn tf = m->trace_fn;
  int ng = m->no_graph;
  m->trace_fn = NULL, m->no_graph = 1;
  m->call_fn = fn, m->call_user = user, m->call_layer = -1;
  int32_t argmax;
  int rc = position(m, m->tok, (size_t)pos * 4, pos, 1, 1, &argmax, NULL);
  m->call_fn = NULL, m->call_user = NULL;
  m->trace_fn = tf, m->no_graph = ng;
  return rc;
}

int qmoe_model_step(qmoe_model *m, int32_t token, int64_t pos, int32_t *argmax, float *logits) {
  return qmoe_model_prefill(m, &token, 1, pos, argmax, logits);
}
