/* hparams.c: the counts a model needs from a GGUF file's metadata (<arch>.block_count, head and expert counts,
 * widths, context length), checked before anyone sizes a buffer with them; `qmoe inspect` reports them. */
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include "qmoe.h"

enum { REQ_ALL = 1, REQ_QWEN3MOE = 2, ZERO_OK_DENSE = 4, PER_LAYER_OK = 8 };

typedef struct {
  const char *suffix; /* after "<arch>." */
  size_t off;
  unsigned flags;
  int64_t max;
  const char *what;
} count_key;

#define F(x) offsetof(qmoe_hparams, x)
static const count_key KEYS[] = {
  { "block_count", F(n_layer), REQ_ALL, 4096, "the number of layers" },
  { "context_length", F(n_ctx), REQ_ALL, INT32_MAX, "the context length" },
  { "embedding_length", F(n_embd), REQ_ALL, 1 << 20, "the hidden width" },
  { "feed_forward_length", F(n_ff), ZERO_OK_DENSE | PER_LAYER_OK, 1 << 24, "the dense FFN width" },
  { "attention.head_count", F(n_head), REQ_ALL | PER_LAYER_OK, 4096, "the number of query heads" },
  { "attention.head_count_kv", F(n_head_kv), REQ_QWEN3MOE | PER_LAYER_OK, 4096, "the number of key/value heads" },
  { "attention.key_length", F(head_dim_k), REQ_QWEN3MOE, 65536, "the key head dimension" },
  { "attention.value_length", F(head_dim_v), REQ_QWEN3MOE, 65536, "the value head dimension" },
  { "expert_count", F(n_expert), REQ_QWEN3MOE | ZERO_OK_DENSE, 65536, "the number of experts" },
  { "expert_used_count", F(n_expert_used), REQ_QWEN3MOE | ZERO_OK_DENSE, 65536, "the experts used per token" },
  { "expert_feed_forward_length", F(n_ff_exp), REQ_QWEN3MOE, 1 << 24, "the expert FFN width" },
};
#undef F

typedef struct {
  const qmoe_gguf *f;
  void (*report)(void *, const char *);
  void *ctx;
  int n_problems;
  char first[1024];
} checker;

static void problem(checker *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void problem(checker *c, const char *fmt, ...) {
  char msg[1024];
  va_list ap;
  va_start(ap, fmt);
  int n = snprintf(msg, sizeof msg, "%s: ", qmoe_gguf_path(c->f));
  if (n > 0 && (size_t)n < sizeof msg) vsnprintf(msg + n, sizeof msg - (size_t)n, fmt, ap);
  va_end(ap);
  if (!c->n_problems++) snprintf(c->first, sizeof c->first, "%s", msg);
  if (c->report) c->report(c->ctx, msg);
}

static int is_int_type(int t) {
  return t == QMOE_GGUF_U8 || t == QMOE_GGUF_I8 || t == QMOE_GGUF_U16 || t == QMOE_GGUF_I16 || t == QMOE_GGUF_U32 ||
         t == QMOE_GGUF_I32 || t == QMOE_GGUF_U64 || t == QMOE_GGUF_I64;
}

/* One integer value of key: 1 and *out when it is in range, else 0 (reported). */
static int check_int(checker *c, const char *key, const qmoe_gguf_value *v, const count_key *k, int zero_ok,
                     const char *elem, int64_t *out) {
  if (!is_int_type(v->type)) {
    problem(c, "offset %" PRIu64 ": key '%s'%s is %s, not an integer (%s)", v->offset, key, elem,
            qmoe_gguf_type_name_of_value(v->type), k->what);
    return 0;
  }
  int64_t i;
  uint64_t u;
  int is_signed = v->type == QMOE_GGUF_I8 || v->type == QMOE_GGUF_I16 || v->type == QMOE_GGUF_I32 || v->type == QMOE_GGUF_I64;
  if (is_signed && qmoe_gguf_value_i64(v, &i) == 0 && i < 0) {
    problem(c, "offset %" PRIu64 ": key '%s'%s is %" PRId64 ": negative (%s)", v->offset, key, elem, i, k->what);
    return 0;
  }
  if (qmoe_gguf_value_u64(v, &u) != 0) {
    problem(c, "offset %" PRIu64 ": key '%s'%s cannot be read as a count", v->offset, key, elem);
    return 0;
  }
  if (u == 0 && !zero_ok) {
    problem(c, "offset %" PRIu64 ": key '%s'%s is 0 (%s must be at least 1)", v->offset, key, elem, k->what);
    return 0;
  }
  if (u > (uint64_t)k->max) {
    problem(c, "offset %" PRIu64 ": key '%s'%s is %" PRIu64 ": more than %" PRId64 " (%s); the file is damaged or hostile",
            v->offset, key, elem, u, k->max, k->what);
    return 0;
  }
  *out = (int64_t)u;
  return 1;
}

int qmoe_hparams_read(const qmoe_gguf *f, qmoe_hparams *hp, void (*report)(void *ctx, const char *msg), void *ctx) {
  checker c = { f, report, ctx, 0, "" };
  memset(hp, 0, sizeof *hp);
  const char *arch;
  uint64_t alen;
  int64_t ai = qmoe_gguf_find_key(f, "general.architecture");
  if (ai < 0) {
    problem(&c, "key 'general.architecture' is missing: not a model file (or one qmoe cannot tell the kind of)");
  } else if (qmoe_gguf_get_str(f, "general.architecture", &arch, &alen) != 0) {
    problem(&c, "offset %" PRIu64 ": key 'general.architecture' is %s, not a string", qmoe_gguf_kv_value(f, ai)->offset,
            qmoe_gguf_type_name_of_value(qmoe_gguf_kv_value(f, ai)->type));
  } else if (alen == 0 || alen >= sizeof hp->arch || memchr(arch, 0, alen) ||
             qmoe_utf8_check(arch, (size_t)alen) >= 0) {
    problem(&c, "offset %" PRIu64 ": key 'general.architecture' (%" PRIu64 " bytes) is not a plain name",
            qmoe_gguf_kv_value(f, ai)->offset, alen);
  } else {
    memcpy(hp->arch, arch, alen);
    hp->arch[alen] = 0;
  }
  if (c.n_problems) {
    qmoe_set_error("%s", c.first);
    return QMOE_EFORMAT;
  }
  int qwen3moe = !strcmp(hp->arch, "qwen3moe");
  /* Experts first: a dense model may leave the expert keys out or at 0. */
  int64_t ek = -1;
  {
    char key[128];
    snprintf(key, sizeof key, "%s.expert_count", hp->arch);
    ek = qmoe_gguf_find_key(f, key);
  }
  uint64_t experts = 0;
  if (ek >= 0) qmoe_gguf_value_u64(qmoe_gguf_kv_value(f, ek), &experts);
  for (size_t i = 0; i < sizeof KEYS / sizeof KEYS[0]; i++) {
    const count_key *k = &KEYS[i];
    char key[128];
    snprintf(key, sizeof key, "%s.%s", hp->arch, k->suffix);
    int64_t *dst = (int64_t *)((char *)hp + k->off);
    int required = (k->flags & REQ_ALL) || (qwen3moe && (k->flags & REQ_QWEN3MOE)) ||
                   (!strcmp(k->suffix, "expert_used_count") && experts > 0);
    int zero_ok = (k->flags & ZERO_OK_DENSE) && !qwen3moe && (strcmp(k->suffix, "expert_used_count") || experts == 0);
    if (!strcmp(k->suffix, "feed_forward_length")) zero_ok = 1; /* MoE-only models may write 0 */
    int64_t ix = qmoe_gguf_find_key(f, key);
    if (ix < 0) {
      if (required) problem(&c, "key '%s' is missing: a model needs %s", key, k->what);
      continue;
    }
    const qmoe_gguf_value *v = qmoe_gguf_kv_value(f, ix);
    if (v->type == QMOE_GGUF_ARRAY && (k->flags & PER_LAYER_OK) && !qwen3moe) {
      /* Per-layer values (some architectures): every element is checked; the largest is kept. */
      qmoe_gguf_iter it;
      qmoe_gguf_value e;
      qmoe_gguf_iter_init(&it, v);
      int64_t best = 0;
      for (uint64_t j = 0; qmoe_gguf_iter_next(&it, &e); j++) {
        char elem[48];
        int64_t x;
        snprintf(elem, sizeof elem, " element %" PRIu64, j);
        if (!check_int(&c, key, &e, k, zero_ok, elem, &x)) break;
        if (x > best) best = x;
      }
      if (hp->n_layer && v->count != (uint64_t)hp->n_layer)
        problem(&c, "offset %" PRIu64 ": key '%s' has %" PRIu64 " per-layer values for %" PRId64 " layers", v->offset,
                key, v->count, hp->n_layer);
      *dst = best;
      continue;
    }
    check_int(&c, key, v, k, zero_ok, "", dst);
  }
  /* Relations the stages rely on. */
  char a[80];
  snprintf(a, sizeof a, "%s", hp->arch);
  if (hp->n_head && hp->n_head_kv && hp->n_head % hp->n_head_kv)
    problem(&c, "key '%s.attention.head_count_kv' = %" PRId64 " does not divide head_count = %" PRId64
            " (grouped-query attention)", a, hp->n_head_kv, hp->n_head);
  if (hp->n_expert_used > hp->n_expert)
    problem(&c, "key '%s.expert_used_count' = %" PRId64 " is more than expert_count = %" PRId64, a, hp->n_expert_used,
            hp->n_expert);
  if (qwen3moe && hp->head_dim_k % 2)
    problem(&c, "key '%s.attention.key_length' = %" PRId64 " is odd: NEOX RoPE pairs dimension i with i + %" PRId64
            "/2", a, hp->head_dim_k, hp->head_dim_k);
  if (qwen3moe) {
    static const char *const FLOATS[] = { "rope.freq_base", "attention.layer_norm_rms_epsilon" };
    double *fd[] = { &hp->rope_freq_base, &hp->rms_eps };
    for (int i = 0; i < 2; i++) {
      char key[128];
      snprintf(key, sizeof key, "%s.%s", a, FLOATS[i]);
      int64_t ix = qmoe_gguf_find_key(f, key);
      if (ix < 0) {
        problem(&c, "key '%s' is missing: a model needs it (no default is assumed)", key);
        continue;
      }
      const qmoe_gguf_value *v = qmoe_gguf_kv_value(f, ix);
      double d;
      if (qmoe_gguf_value_f64(v, &d) != 0 || (v->type != QMOE_GGUF_F32 && v->type != QMOE_GGUF_F64))
        problem(&c, "offset %" PRIu64 ": key '%s' is %s, not a float", v->offset, key, qmoe_gguf_type_name_of_value(v->type));
      else if (!(d > 0) || !isfinite(d))
        problem(&c, "offset %" PRIu64 ": key '%s' is %g: it must be a finite number above 0", v->offset, key, d);
      else
        *fd[i] = d;
    }
  }
  /* Layer tensors must lie within block_count. */
  if (hp->n_layer) {
    for (int64_t i = 0; i < qmoe_gguf_tensor_count(f); i++) {
      const char *name = qmoe_gguf_tensor_at(f, i)->name;
      if (strncmp(name, "blk.", 4) || name[4] < '0' || name[4] > '9') continue;
      int64_t l = 0;
      const char *p = name + 4;
      while (*p >= '0' && *p <= '9' && l <= INT32_MAX) l = l * 10 + (*p++ - '0');
      if (*p == '.' && l >= hp->n_layer) {
        problem(&c, "tensor '%s' is in layer %" PRId64 " but key '%s.block_count' = %" PRId64 " (layers 0..%" PRId64 ")",
                name, l, a, hp->n_layer, hp->n_layer - 1);
        break;
      }
    }
  }
  if (c.n_problems) {
    qmoe_set_error("%s", c.first);
    return QMOE_EFORMAT;
  }
  return 0;
}
