/* pv_check.c: the checks that need more than one key — quant layout arithmetic, stage variants and shapes,
 * model history and thresholds (per file) — and, across files, unique names and ids and references. */
#include "pv.h"
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

static void report(pv_set *set, const pv_file *f, diag_severity sev, const qy_node *n, const char *code,
                   const char *fmt, ...) __attribute__((format(printf, 6, 7)));
static void report(pv_set *set, const pv_file *f, diag_severity sev, const qy_node *n, const char *code,
                   const char *fmt, ...) {
  char msg[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  diag_list *d = f->given ? set->diag : &set->scratch;
  diag_add(d, sev, f->path, n ? n->line : 1, n ? n->col : 1, code, "%s", msg);
}

#define ERR(node, code, ...) report(set, f, DIAG_ERROR, node, code, __VA_ARGS__)
#define WARN(node, code, ...) report(set, f, DIAG_WARNING, node, code, __VA_ARGS__)

static int str_eq(const pv_str *s, const char *t) { return s->node && !strcmp(s->s, t); }

static int list_has(const pv_list *l, const char *t) {
  for (size_t i = 0; i < l->n; i++) {
    const pv_str *s = (const pv_str *)l->items + i;
    if (str_eq(s, t)) return 1;
  }
  return 0;
}

static void check_stem(pv_set *set, pv_file *f, const pv_str *name, const char *what) {
  if (name->node && strcmp(name->s, f->stem) != 0)
    ERR(name->node, "E203", "%s '%s' does not match the file name '%s'; rename the file or the %s", what, name->s,
        f->stem, what);
}

/* ---- Quant ---------------------------------------------------------------------------------------- */

static int field_type_size(const char *t) {
  if (!strcmp(t, "u8") || !strcmp(t, "i8")) return 1;
  if (!strcmp(t, "u16") || !strcmp(t, "i16") || !strcmp(t, "f16") || !strcmp(t, "bf16")) return 2;
  if (!strcmp(t, "f32")) return 4;
  return 0;
}

/* Fields by offset; equal offsets keep their order in the file (pointers into one array). */
static int cmp_field_offset(const void *a, const void *b) {
  const pv_quant_field *x = *(const pv_quant_field *const *)a, *y = *(const pv_quant_field *const *)b;
  if (x->offset.v != y->offset.v) return x->offset.v < y->offset.v ? -1 : 1;
  return x < y ? -1 : x > y;
}

static int cmp_field_name(const void *a, const void *b) {
  const pv_quant_field *x = *(const pv_quant_field *const *)a, *y = *(const pv_quant_field *const *)b;
  int c = strcmp(x->name.s, y->name.s);
  if (c) return c;
  return x < y ? -1 : x > y;
}

static void check_layout(pv_set *set, pv_file *f, const pv_quant *q) {
  const pv_quant_field *fs = q->fields.items;
  size_t n = q->fields.n;
  if (!n || !q->fields.node) return;
  for (size_t i = 0; i < n; i++)
    if (!fs[i].node || !fs[i].name.node || !fs[i].type.node || !fs[i].count.node || !fs[i].offset.node)
      return; /* a field is already reported broken; arithmetic on the rest would mislead */
  const pv_quant_field **order = xmalloc(n * sizeof *order);
  /* Field names are unique. */
  for (size_t i = 0; i < n; i++) order[i] = &fs[i];
  qsort(order, n, sizeof *order, cmp_field_name);
  for (size_t i = 1; i < n; i++)
    if (!strcmp(order[i]->name.s, order[i - 1]->name.s))
      ERR(order[i]->name.node, "E108", "field '%s' is defined twice (also at line %d, column %d)", order[i]->name.s,
          order[i - 1]->name.node->line, order[i - 1]->name.node->col);
  /* Sorted by offset, each field starts where the previous one ends and the last ends at block_bytes. */
  for (size_t i = 0; i < n; i++) order[i] = &fs[i];
  qsort(order, n, sizeof *order, cmp_field_offset);
  int64_t end = 0;
  const pv_quant_field *prev = NULL;
  for (size_t k = 0; k < n; k++) {
    const pv_quant_field *fl = order[k];
    int64_t size = fl->count.v * field_type_size(fl->type.s);
    int64_t off = fl->offset.v;
    if (off > end) {
      if (prev)
        ERR(fl->offset.node, "E210", "gap of %lld byte(s) before field '%s': it starts at byte %lld but '%s' ends at "
            "byte %lld; fields must tile the block with no gaps", (long long)(off - end), fl->name.s, (long long)off,
            prev->name.s, (long long)end);
      else
        ERR(fl->offset.node, "E210", "gap of %lld byte(s) at the start of the block: the first field '%s' starts at "
            "byte %lld, not 0", (long long)off, fl->name.s, (long long)off);
    } else if (off < end && prev) {
      ERR(fl->offset.node, "E211", "field '%s' (bytes %lld..%lld) overlaps field '%s' (which ends at byte %lld)",
          fl->name.s, (long long)off, (long long)(off + size - 1), prev->name.s, (long long)end);
    }
    if (off + size > end) {
      end = off + size;
      prev = fl;
    }
  }
  free((void *)order);
  if (q->block_bytes.node) {
    if (end > q->block_bytes.v)
      ERR(q->block_bytes.node, "E212", "fields end at byte %lld ('%s'), past block_bytes %lld", (long long)end,
          prev ? prev->name.s : "?", (long long)q->block_bytes.v);
    else if (end < q->block_bytes.v)
      ERR(q->block_bytes.node, "E212", "fields cover bytes 0..%lld but block_bytes is %lld: %lld byte(s) at the end "
          "belong to no field", (long long)(end - 1), (long long)q->block_bytes.v, (long long)(q->block_bytes.v - end));
  }
}

static int hexval(int c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

static void check_vectors(pv_set *set, pv_file *f, const pv_quant *q) {
  const pv_quant_vector *tv = q->test_vectors.items;
  for (size_t t = 0; t < q->test_vectors.n; t++) {
    if (!tv[t].bytes.node) continue;
    const qy_node *b = tv[t].bytes.node;
    size_t digits = 0, bad = 0;
    char badc = 0;
    for (size_t i = 0; i < b->len; i++) {
      int c = (unsigned char)b->str[i];
      if (c == ' ' || c == '\t' || c == '\n' || c == '\r') continue;
      if (hexval(c) < 0) {
        bad = digits + 1;
        badc = (char)c;
        break;
      }
      digits++;
    }
    if (bad) {
      char q2[16];
      ERR(b, "E214", "test_vectors[%zu].bytes: '%s' at digit %zu is not a hex digit; write the bytes as hex "
          "(0-9, a-f; whitespace is ignored)", t + 1, pv_quote(q2, sizeof q2, &badc, 1), bad);
      continue;
    }
    if (digits == 0 || digits % 2) {
      ERR(b, "E214", "test_vectors[%zu].bytes has %zu hex digit(s); two digits per byte, at least one block", t + 1,
          digits);
      continue;
    }
    if (!q->block_bytes.node || !q->block_elements.node) continue;
    size_t nbytes = digits / 2;
    if (nbytes % (size_t)q->block_bytes.v) {
      ERR(b, "E214", "test_vectors[%zu].bytes holds %zu byte(s), not a whole number of %lld-byte blocks", t + 1,
          nbytes, (long long)q->block_bytes.v);
      continue;
    }
    size_t blocks = nbytes / (size_t)q->block_bytes.v;
    size_t want = blocks * (size_t)q->block_elements.v;
    if (tv[t].values.node && tv[t].values.n != want)
      ERR(tv[t].values.node, "E215", "test_vectors[%zu].values lists %zu value(s); %zu block(s) of %lld elements "
          "decode to %zu", t + 1, tv[t].values.n, blocks, (long long)q->block_elements.v, want);
  }
}

static void check_quant(pv_set *set, pv_file *f) {
  pv_quant *q = &f->rec.quant;
  check_stem(set, f, &q->name, "quant name");
  check_layout(set, f, q);
  check_vectors(set, f, q);
}

/* ---- Stage ---------------------------------------------------------------------------------------- */

static const pv_stage_param *find_param(const pv_stage *s, const char *name) {
  const pv_stage_param *ps = s->params.items;
  for (size_t i = 0; i < s->params.n; i++)
    if (ps[i].name.node && !strcmp(ps[i].name.s, name)) return &ps[i];
  return NULL;
}

static void check_shape(pv_set *set, pv_file *f, const pv_stage *s, const pv_stage_buffer *b, const char *where) {
  const pv_sym *sh = b->shape.items;
  for (size_t i = 0; i < b->shape.n; i++) {
    if (!sh[i].node || sh[i].is_int) continue;
    const pv_stage_param *p = find_param(s, sh[i].s);
    if (p && p->type.node && !strcmp(p->type.s, "float")) {
      ERR(sh[i].node, "E233", "%s '%s': shape names '%s', a float param; shapes use int params", where, b->name.s,
          sh[i].s);
    } else if (!p) {
      /* Only params: a backend sizes every buffer from the call's p[] (generated/c/stage_table.c). */
      const char *cands[64];
      size_t nc = 0;
      const pv_stage_param *ps = s->params.items;
      for (size_t j = 0; j < s->params.n && nc < 64; j++)
        if (ps[j].name.node && str_eq(&ps[j].type, "int")) cands[nc++] = ps[j].name.s;
      const char *sug = pv_suggest(sh[i].s, cands, nc);
      ERR(sh[i].node, "E233", "%s '%s': shape names '%s', which is not an int param of this stage%s%s%s", where,
          b->name.s, sh[i].s, sug ? "; did you mean '" : "", sug ? sug : "", sug ? "'?" : "");
    }
  }
}

static int same_shape(const pv_stage_buffer *a, const pv_stage_buffer *b) {
  if (a->shape.n != b->shape.n) return 0;
  const pv_sym *x = a->shape.items, *y = b->shape.items;
  for (size_t i = 0; i < a->shape.n; i++) {
    if (!x[i].node || !y[i].node || x[i].is_int != y[i].is_int) return 0;
    if (x[i].is_int ? x[i].v != y[i].v : strcmp(x[i].s, y[i].s) != 0) return 0;
  }
  return 1;
}

static void check_stage(pv_set *set, pv_file *f) {
  pv_stage *s = &f->rec.stage;
  check_stem(set, f, &s->name, "stage name");
  int by_qtype = list_has(&s->varies_by, "qtype"), by_acc = list_has(&s->varies_by, "acc");
  if (s->varies_by.node) {
    if (by_qtype && !s->qtypes.node && !pv_get(s->node, "qtypes"))
      ERR(s->varies_by.node, "E230", "the stage varies by qtype but has no 'qtypes'; write `qtypes: all` or a list of "
          "quant names");
    if (!by_qtype && s->qtypes.node)
      ERR(s->qtypes.node, "E230", "'qtypes' is given but the stage does not vary by qtype; remove it or add qtype to "
          "varies_by");
    if (by_acc && !s->accumulators.node && !pv_get(s->node, "accumulators"))
      ERR(s->varies_by.node, "E231", "the stage varies by acc but has no 'accumulators'; write `accumulators: [f32, "
          "f64]`");
    if (!by_acc && s->accumulators.node)
      ERR(s->accumulators.node, "E231", "'accumulators' is given but the stage does not vary by acc; remove it or add "
          "acc to varies_by");
  }
  /* Names are unique across params, inputs and outputs (they share one namespace in generated code). */
  const char *names[256];
  const qy_node *nodes[256];
  size_t nn = 0;
  const pv_stage_param *ps = s->params.items;
  for (size_t i = 0; i < s->params.n && nn < 256; i++)
    if (ps[i].name.node) { names[nn] = ps[i].name.s; nodes[nn++] = ps[i].name.node; }
  const pv_list *bufs[2] = { &s->inputs, &s->outputs };
  for (int k = 0; k < 2; k++) {
    const pv_stage_buffer *bs = bufs[k]->items;
    for (size_t i = 0; i < bufs[k]->n && nn < 256; i++)
      if (bs[i].name.node) { names[nn] = bs[i].name.s; nodes[nn++] = bs[i].name.node; }
  }
  for (size_t i = 0; i < nn; i++)
    for (size_t j = 0; j < i; j++)
      if (!strcmp(names[i], names[j])) {
        ERR(nodes[i], "E108", "name '%s' is used twice in this stage (also at line %d, column %d); params and buffers "
            "share one namespace", names[i], nodes[j]->line, nodes[j]->col);
        break;
      }
  /* Shapes, dtypes, aliasing. */
  int any_q = 0;
  for (int k = 0; k < 2; k++) {
    const pv_stage_buffer *bs = bufs[k]->items;
    const char *where = k == 0 ? "input" : "output";
    for (size_t i = 0; i < bufs[k]->n; i++) {
      const pv_stage_buffer *b = &bs[i];
      if (!b->node || !b->name.node) continue;
      check_shape(set, f, s, b, where);
      if (str_eq(&b->dtype, "qtype")) {
        any_q = 1;
        if (s->varies_by.node && !by_qtype)
          ERR(b->dtype.node, "E232", "%s '%s' has dtype qtype but the stage does not vary by qtype; add qtype to "
              "varies_by or use f32", where, b->name.s);
      }
      if (b->may_alias.node) {
        if (k == 0) {
          ERR(b->may_alias.node, "E235", "input '%s': may_alias belongs on an output (naming the input it may be)",
              b->name.s);
          continue;
        }
        const pv_stage_buffer *ins = s->inputs.items, *in = NULL;
        for (size_t j = 0; j < s->inputs.n; j++)
          if (ins[j].name.node && !strcmp(ins[j].name.s, b->may_alias.s)) in = &ins[j];
        if (!in)
          ERR(b->may_alias.node, "E235", "output '%s' may alias '%s', which is not an input of this stage", b->name.s,
              b->may_alias.s);
        else if (!same_shape(in, b) || !in->dtype.node || !b->dtype.node || strcmp(in->dtype.s, b->dtype.s) != 0)
          ERR(b->may_alias.node, "E235", "output '%s' may alias input '%s' only if both have the same dtype and shape",
              b->name.s, b->may_alias.s);
      }
    }
  }
  if (by_qtype && !any_q && s->inputs.node)
    ERR(s->varies_by.node, "E232", "the stage varies by qtype but no input has dtype qtype");
  /* What one qmoe_stage_call can carry (runtime/stages/backend.h). */
  size_t nint = 0, nflt = 0;
  for (size_t i = 0; i < s->params.n; i++) {
    if (str_eq(&ps[i].type, "int")) nint++;
    if (str_eq(&ps[i].type, "float")) nflt++;
  }
  if (nint > PV_STAGE_MAX_PARAMS)
    ERR(s->params.node, "E234", "%zu int params; a stage call carries at most %d (PV_STAGE_MAX_PARAMS: what one "
        "stage call carries)", nint, PV_STAGE_MAX_PARAMS);
  if (nflt > PV_STAGE_MAX_FPARAMS)
    ERR(s->params.node, "E234", "%zu float params; a stage call carries at most %d (PV_STAGE_MAX_FPARAMS: what one "
        "stage call carries)", nflt, PV_STAGE_MAX_FPARAMS);
  if (s->inputs.n + s->outputs.n > PV_STAGE_MAX_BUFS)
    ERR(s->outputs.node ? s->outputs.node : s->node, "E234", "%zu buffers; a stage call carries at most %d "
        "(PV_STAGE_MAX_BUFS: what one stage call carries)", s->inputs.n + s->outputs.n, PV_STAGE_MAX_BUFS);
  /* tokens: per-token buffers are f32/i32 buffers of the stage (weights are shared by the tokens, so never
   * qtype), advancing params are int params, and no per-token buffer's shape names an advancing param (a
   * token's slice has one size for all T). */
  const pv_stage_tokens *tk = &s->tokens;
  const pv_str *tp = tk->params.items;
  for (size_t i = 0; tk->node && i < tk->params.n; i++) {
    if (!tp[i].node) continue;
    const pv_stage_param *p = find_param(s, tp[i].s);
    if (!p || !str_eq(&p->type, "int"))
      ERR(tp[i].node, "E237", "tokens.params names '%s', which is not an int param of this stage", tp[i].s);
  }
  const pv_str *tb = tk->buffers.items;
  for (size_t i = 0; tk->node && i < tk->buffers.n; i++) {
    if (!tb[i].node) continue;
    const pv_stage_buffer *b = NULL;
    for (int k = 0; k < 2 && !b; k++) {
      const pv_stage_buffer *bs = bufs[k]->items;
      for (size_t j = 0; j < bufs[k]->n; j++)
        if (bs[j].name.node && !strcmp(bs[j].name.s, tb[i].s)) b = &bs[j];
    }
    if (!b) {
      ERR(tb[i].node, "E237", "tokens.buffers names '%s', which is not a buffer of this stage", tb[i].s);
      continue;
    }
    if (str_eq(&b->dtype, "qtype"))
      ERR(tb[i].node, "E237", "tokens.buffers names '%s', a qtype buffer: weights are shared by the tokens", tb[i].s);
    const pv_sym *sh = b->shape.items;
    for (size_t d = 0; d < b->shape.n; d++)
      for (size_t j = 0; sh[d].node && !sh[d].is_int && j < tk->params.n; j++)
        if (tp[j].node && !strcmp(sh[d].s, tp[j].s))
          ERR(tb[i].node, "E237", "per-token buffer '%s' has a shape naming '%s', which grows per token: a token's "
              "slice must have one size", tb[i].s, tp[j].s);
  }
}

/* ---- Model ---------------------------------------------------------------------------------------- */

/* Thresholds per metric: the range that makes sense, and which way a pass compares. */
typedef struct {
  const char *metric;
  double lo, hi;
  int lo_open, hi_open;
  int dir; /* -1: smaller is better (<=, <); +1: larger is better (>=, >); 0: exactly (==) */
  const char *range_text;
} metric_rule;

static const metric_rule METRIC_RULES[] = {
  { "nmse", 0, INFINITY, 1, 1, -1, "> 0" },
  { "max_abs_rel", 0, INFINITY, 1, 1, -1, "> 0" },
  { "cosine", 0, 1, 1, 0, +1, "in (0, 1]" },
  { "finite", 1, 1, 0, 0, 0, "exactly 1" },
  { "equal", 1, 1, 0, 0, 0, "exactly 1" },
  { "agreement", 0, 1, 0, 0, +1, "in [0, 1]" },
  { "abs_err", 0, INFINITY, 1, 1, -1, "> 0" },
  { "sum_err", 0, INFINITY, 1, 1, -1, "> 0" },
  { "tokens_per_s", 0, INFINITY, 1, 1, +1, "> 0" },
  { "ratio_to_ceiling", 0, 1, 1, 0, +1, "in (0, 1]" },
  { "bytes", 0, INFINITY, 1, 1, -1, "> 0" },
  { "present", 1, 1, 0, 0, 0, "exactly 1" },
};

static void check_threshold(pv_set *set, pv_file *f, const pv_check *c) {
  if (!c->metric.node) return;
  const metric_rule *r = NULL;
  for (size_t i = 0; i < sizeof METRIC_RULES / sizeof METRIC_RULES[0]; i++)
    if (!strcmp(METRIC_RULES[i].metric, c->metric.s)) r = &METRIC_RULES[i];
  if (!r) return;
  if (c->threshold.node) {
    double t = c->threshold.v;
    int ok = (r->lo_open ? t > r->lo : t >= r->lo) && (r->hi_open ? t < r->hi : t <= r->hi);
    if (!ok)
      ERR(c->threshold.node, "E220", "threshold %s is out of range for metric %s: it must be %s", c->threshold.node->str,
          r->metric, r->range_text);
  }
  if (c->comparator.node) {
    const char *cmp = c->comparator.s;
    int dir = !strcmp(cmp, "<=") || !strcmp(cmp, "<") ? -1 : !strcmp(cmp, ">=") || !strcmp(cmp, ">") ? +1 : 0;
    if (dir != r->dir)
      ERR(c->comparator.node, "E221", "comparator '%s' does not fit metric %s: use %s", cmp, r->metric,
          r->dir < 0 ? "<= or < (smaller is better)" : r->dir > 0 ? "\">=\" or \">\" (larger is better)" : "==");
  }
}

static void check_history(pv_set *set, pv_file *f, const pv_model *m) {
  const pv_amendment *a = m->amendment_history.items;
  size_t n = m->amendment_history.n;
  const pv_amendment *last = NULL; /* the newest amendment with a valid version */
  for (size_t i = 0; i < n; i++) {
    if (!a[i].node) continue;
    if (a[i].kind.node) {
      if (i == 0 && strcmp(a[i].kind.s, "initial") != 0)
        ERR(a[i].kind.node, "E206", "the first amendment must be of kind initial, not %s", a[i].kind.s);
      if (i > 0 && !strcmp(a[i].kind.s, "initial"))
        ERR(a[i].kind.node, "E206", "only the first amendment is of kind initial");
    }
    if (!a[i].version.node) continue;
    if (last && pv_semver_cmp(a[i].version.s, last->version.s) <= 0)
      ERR(a[i].version.node, "E204", "version %s does not come after %s (line %d); list amendments oldest first with "
          "strictly increasing versions", a[i].version.s, last->version.s, last->version.node->line);
    if (last && a[i].date.node && last->date.node && strcmp(a[i].date.s, last->date.s) < 0)
      WARN(a[i].date.node, "W204", "dated %s, before the previous amendment (%s)", a[i].date.s, last->date.s);
    if (!last || pv_semver_cmp(a[i].version.s, last->version.s) > 0) last = &a[i];
  }
  const pv_amendment *newest = n && a[n - 1].version.node ? &a[n - 1] : NULL;
  if (newest && m->metadata.version.node && strcmp(newest->version.s, m->metadata.version.s) != 0)
    ERR(m->metadata.version.node, "E205", "metadata.version is %s but the newest amendment (line %d) is %s; they must "
        "be equal", m->metadata.version.s, newest->version.node->line, newest->version.s);
}

static void check_model(pv_set *set, pv_file *f) {
  pv_model *m = &f->rec.model;
  check_stem(set, f, &m->metadata.id, "metadata.id");
  const pv_model_dims *d = &m->dims;
  if (d->experts_used.node && d->experts.node && d->experts_used.v > d->experts.v)
    ERR(d->experts_used.node, "E240", "experts_used %lld is more than experts %lld", (long long)d->experts_used.v,
        (long long)d->experts.v);
  if (d->heads.node && d->kv_heads.node && d->heads.v % d->kv_heads.v)
    ERR(d->kv_heads.node, "E240", "kv_heads %lld does not divide heads %lld (grouped-query attention)",
        (long long)d->kv_heads.v, (long long)d->heads.v);
  if (d->head_dim.node && d->head_dim.v % 2)
    ERR(d->head_dim.node, "E240", "head_dim %lld is odd: NEOX RoPE (stage rope_neox) rotates dimension i with i + "
        "head_dim/2, so head_dim must be even", (long long)d->head_dim.v);
  const pv_falsifier *fs = m->falsification_tests.items;
  for (size_t i = 0; i < m->falsification_tests.n; i++)
    if (fs[i].node) check_threshold(set, f, &fs[i].check);
  check_history(set, f, m);
}

/* ---- Recipe --------------------------------------------------------------------------------------- */

static void check_recipe(pv_set *set, pv_file *f) {
  const pv_recipe *r = &f->rec.recipe;
  check_stem(set, f, &r->name, "recipe name");
  const pv_recipe_rule *rs = r->rules.items;
  for (size_t i = 0; i < r->rules.n; i++) {
    const pv_str *ts = rs[i].tensors.items;
    for (size_t j = 0; j < rs[i].tensors.n; j++)
      if (ts[j].node && rs[i].when.node && strncmp(ts[j].s, "blk.", 4) != 0)
        ERR(ts[j].node, "E241", "rules[%zu]: '%s' is not a layer tensor pattern (blk.*...), but the rule has a `when` "
            "over the layer; split the rule", i + 1, ts[j].s);
  }
}

void pv_check_file(pv_set *set, pv_file *f) {
  if (!f->loaded) return;
  switch (f->kind) {
  case PV_KIND_RECIPE: check_recipe(set, f); break;
  case PV_KIND_QUANT: check_quant(set, f); break;
  case PV_KIND_STAGE: check_stage(set, f); break;
  case PV_KIND_MODEL: check_model(set, f); break;
  default: break;
  }
}

/* ---- Across files --------------------------------------------------------------------------------- */

typedef enum { NS_QUANT, NS_GGML, NS_STAGE, NS_TRACE, NS_ORDER, NS_ID, NS_COUNT } pv_ns;
static const char *const NS_LABEL[NS_COUNT] = { "quant name", "ggml_type", "stage name", "trace name", "stage order",
                                                "id" };

typedef struct {
  pv_ns ns;
  const char *key;     /* the defining string (lives as long as the file), or num */
  char num[24];
  const char *owner;   /* e.g. the quant a ggml_type belongs to */
  const pv_file *file;
  const qy_node *node;
  size_t seq;          /* load order, so "first" is well defined */
  int alias;           /* a quant alias, not its name */
  const pv_falsifier *falsifier; /* for FALSIFY ids: the definition */
} pv_def;

typedef struct { pv_def *v; size_t n, cap; } def_table;

static void def_add_num(def_table *t, pv_ns ns, const char *key, int64_t num, const char *owner, const pv_file *f,
                        const qy_node *n, int alias) {
  if (!n) return;
  if (t->n == t->cap) {
    t->cap = t->cap ? 2 * t->cap : 256;
    t->v = xrealloc(t->v, t->cap * sizeof *t->v);
  }
  pv_def *d = &t->v[t->n];
  d->ns = ns;
  d->key = key;
  if (!key) snprintf(d->num, sizeof d->num, "%lld", (long long)num);
  d->owner = owner;
  d->file = f;
  d->node = n;
  d->seq = t->n;
  d->alias = alias;
  d->falsifier = NULL;
  t->n++;
}

static void def_add(def_table *t, pv_ns ns, const char *key, const char *owner, const pv_file *f, const qy_node *n,
                    int alias) {
  def_add_num(t, ns, key, 0, owner, f, n, alias);
}

static const char *key_of(const pv_def *d) { return d->key ? d->key : d->num; }

static int cmp_def(const void *a, const void *b) {
  const pv_def *x = a, *y = b;
  if (x->ns != y->ns) return x->ns < y->ns ? -1 : 1;
  int c = strcmp(key_of(x), key_of(y));
  if (c) return c;
  return x->seq < y->seq ? -1 : x->seq > y->seq;
}

static const pv_def *def_find(const def_table *t, pv_ns ns, const char *key) {
  size_t lo = 0, hi = t->n;
  while (lo < hi) {
    size_t mid = (lo + hi) / 2;
    const pv_def *d = &t->v[mid];
    int c = d->ns != ns ? (d->ns < ns ? -1 : 1) : strcmp(key_of(d), key);
    if (c < 0) lo = mid + 1;
    else hi = mid;
  }
  return lo < t->n && t->v[lo].ns == ns && !strcmp(key_of(&t->v[lo]), key) ? &t->v[lo] : NULL;
}

static void collect_defs(def_table *t, pv_file *f) {
  if (f->kind == PV_KIND_QUANT) {
    const pv_quant *q = &f->rec.quant;
    if (!q->name.node) return;
    def_add(t, NS_QUANT, q->name.s, q->name.s, f, q->name.node, 0);
    const pv_str *al = q->aliases.items;
    for (size_t i = 0; i < q->aliases.n; i++)
      if (al[i].node) def_add(t, NS_QUANT, al[i].s, q->name.s, f, al[i].node, 1);
    def_add_num(t, NS_GGML, NULL, q->ggml_type.v, q->name.s, f, q->ggml_type.node, 0);
  } else if (f->kind == PV_KIND_STAGE) {
    const pv_stage *s = &f->rec.stage;
    if (!s->name.node) return;
    def_add(t, NS_STAGE, s->name.s, s->name.s, f, s->name.node, 0);
    if (s->trace.node) def_add(t, NS_TRACE, s->trace.s, s->name.s, f, s->trace.node, 0);
    def_add_num(t, NS_ORDER, NULL, s->order.v, s->name.s, f, s->order.node, 0);
  } else if (f->kind == PV_KIND_MODEL) {
    const pv_model *m = &f->rec.model;
    if (m->metadata.id.node) def_add(t, NS_ID, m->metadata.id.s, m->metadata.id.s, f, m->metadata.id.node, 0);
    const pv_equation *eq = m->equations.items;
    for (size_t i = 0; i < m->equations.n; i++) def_add(t, NS_ID, eq[i].id.s, NULL, f, eq[i].id.node, 0);
    const pv_criterion *ac = m->acceptance_criteria.items;
    for (size_t i = 0; i < m->acceptance_criteria.n; i++) def_add(t, NS_ID, ac[i].id.s, NULL, f, ac[i].id.node, 0);
    const pv_falsifier *fs = m->falsification_tests.items;
    for (size_t i = 0; i < m->falsification_tests.n; i++) {
      size_t before = t->n;
      def_add(t, NS_ID, fs[i].id.s, NULL, f, fs[i].id.node, 0);
      if (t->n > before) t->v[before].falsifier = &fs[i];
    }
    const pv_impl_stage *im = m->implementation_stages.items;
    for (size_t i = 0; i < m->implementation_stages.n; i++)
      def_add(t, NS_ID, im[i].id.s, NULL, f, im[i].id.node, 0);
  }
}

static void report_dups(pv_set *set, def_table *t) {
  size_t i = 0;
  while (i < t->n) {
    size_t j = i + 1;
    while (j < t->n && t->v[j].ns == t->v[i].ns && !strcmp(key_of(&t->v[j]), key_of(&t->v[i]))) j++;
    if (j - i > 1) {
      size_t given = 0;
      for (size_t k = i; k < j; k++) given += t->v[k].file->given ? 1u : 0u;
      for (size_t k = i; k < j; k++) {
        const pv_def *d = &t->v[k];
        if (!d->file->given) continue;
        /* Report each later definition against the first; the first only when every other one is a
         * reference-only file (otherwise a later given one reports the pair). */
        const pv_def *other = k > i ? &t->v[i] : given == 1 ? &t->v[i + 1] : NULL;
        if (!other) continue;
        pv_file *f = (pv_file *)d->file;
        const char *owner = other->owner && (d->ns == NS_GGML || d->ns == NS_TRACE || d->ns == NS_ORDER)
                                ? other->owner : NULL;
        ERR(d->node, "E201", "%s '%s' is also defined at %s:%d:%d%s%s%s; it must be unique", NS_LABEL[d->ns], key_of(d),
            other->file->path, other->node->line, other->node->col, owner ? " (by '" : "", owner ? owner : "",
            owner ? "')" : "");
      }
    }
    i = j;
  }
}

/* A reference from a given file to a definition in namespace NS; the definition, or NULL. */
static const pv_def *check_ref(pv_set *set, def_table *t, pv_file *f, pv_ns ns, const pv_str *ref, const char *what,
                               size_t *budget) {
  if (!ref->node || !f->given) return NULL;
  const pv_def *d = def_find(t, ns, ref->s);
  if (d && d->alias) {
    ERR(ref->node, "E202", "%s '%s' is an alias of '%s'; refer to the quant by its name", what, ref->s, d->owner);
    return NULL;
  }
  if (d) return d;
  const char *sug = NULL;
  if (*budget > 0) {
    /* Candidates: definitions of the same namespace (and, for ids, of the same prefix). */
    (*budget)--;
    const char *dash = strchr(ref->s, '-');
    size_t plen = ns == NS_ID && dash ? (size_t)(dash - ref->s) + 1 : 0;
    int best = 1 << 30;
    size_t len = strlen(ref->s);
    int limit = len <= 3 ? 1 : len <= 8 ? 2 : (int)(len / 3);
    for (size_t i = 0; i < t->n; i++) {
      const pv_def *c = &t->v[i];
      if (c->ns != ns || c->alias || (plen && strncmp(key_of(c), ref->s, plen) != 0)) continue;
      int dist = pv_edit_distance(ref->s, key_of(c));
      if (dist <= limit && dist < best) {
        best = dist;
        sug = key_of(c);
      }
    }
  }
  const char *where = ns == NS_QUANT ? "quant contract" : ns == NS_STAGE ? "stage contract" : "model contract";
  ERR(ref->node, "E202", "%s '%s' is not defined in any %s%s%s%s", what, ref->s, where, sug ? "; did you mean '" : "",
      sug ? sug : "", sug ? "'?" : "");
  return NULL;
}

/* A stage naming a falsifier must be one the falsifier's check applies to. */
static void check_stage_falsifier(pv_set *set, pv_file *f, const pv_stage *s, const pv_str *ref, const pv_def *d) {
  if (!d || !d->falsifier || !s->name.node) return;
  const pv_check *c = &d->falsifier->check;
  if (c->stages.n && !list_has(&c->stages, s->name.s))
    ERR(ref->node, "E236", "%s applies only to the stages its check.stages lists (%s:%d), not to '%s'; remove it here "
        "or add the stage there", ref->s, d->file->path, c->stages.node->line, s->name.s);
  if (c->acc.node && strcmp(c->acc.s, "f32") && s->varies_by.node && !list_has(&s->varies_by, "acc"))
    ERR(ref->node, "E236", "%s checks %s accumulators but this stage does not vary by acc; remove it here",
        ref->s, c->acc.s);
  else if (c->acc.node && strcmp(c->acc.s, "f32") && s->accumulators.node && !list_has(&s->accumulators, c->acc.s))
    ERR(ref->node, "E236", "%s checks %s accumulators but this stage's accumulators do not list %s; remove it here "
        "or add %s there", ref->s, c->acc.s, c->acc.s, c->acc.s);
}

static void check_refs(pv_set *set, def_table *t, pv_file *f, size_t *budget) {
  if (f->kind == PV_KIND_RECIPE) {
    const pv_recipe_rule *rs = f->rec.recipe.rules.items;
    for (size_t i = 0; i < f->rec.recipe.rules.n; i++)
      if (rs[i].qtype.node) check_ref(set, t, f, NS_QUANT, &rs[i].qtype, "qtype", budget);
  } else if (f->kind == PV_KIND_STAGE) {
    const pv_stage *s = &f->rec.stage;
    const pv_str *qt = s->qtypes.list.items;
    for (size_t i = 0; i < s->qtypes.list.n; i++) check_ref(set, t, f, NS_QUANT, &qt[i], "qtype", budget);
    const pv_str *fa = s->falsifiers.items;
    for (size_t i = 0; i < s->falsifiers.n; i++)
      check_stage_falsifier(set, f, s, &fa[i], check_ref(set, t, f, NS_ID, &fa[i], "falsifier", budget));
  } else if (f->kind == PV_KIND_MODEL) {
    const pv_model *m = &f->rec.model;
    const pv_falsifier *fs = m->falsification_tests.items;
    for (size_t i = 0; i < m->falsification_tests.n; i++) {
      const pv_str *cr = fs[i].criteria.items;
      for (size_t j = 0; j < fs[i].criteria.n; j++) check_ref(set, t, f, NS_ID, &cr[j], "criterion", budget);
      const pv_str *st = fs[i].check.stages.items;
      for (size_t j = 0; j < fs[i].check.stages.n; j++) check_ref(set, t, f, NS_STAGE, &st[j], "stage", budget);
    }
    const pv_impl_stage *im = m->implementation_stages.items;
    for (size_t i = 0; i < m->implementation_stages.n; i++) {
      const pv_str *fa = im[i].falsifiers.items;
      for (size_t j = 0; j < im[i].falsifiers.n; j++) check_ref(set, t, f, NS_ID, &fa[j], "falsifier", budget);
    }
  }
}

/* Sorted set of referenced ids, to warn about definitions nothing uses. */
typedef struct { const char **v; size_t n, cap; } name_set;

static void ns_add(name_set *s, const pv_str *x) {
  if (!x->node) return;
  if (s->n == s->cap) {
    s->cap = s->cap ? 2 * s->cap : 64;
    s->v = xrealloc(s->v, s->cap * sizeof *s->v);
  }
  s->v[s->n++] = x->s;
}

static int cmp_cstr(const void *a, const void *b) { return strcmp(*(const char *const *)a, *(const char *const *)b); }

static int ns_has(const name_set *s, const char *x) {
  return s->n && bsearch(&x, s->v, s->n, sizeof *s->v, cmp_cstr) != NULL;
}

static void check_unused(pv_set *set) {
  name_set tested = { 0 }, discharged = { 0 };
  for (size_t k = 0; k < set->n; k++) {
    pv_file *f = set->files[k];
    if (!f->loaded || f->kind != PV_KIND_MODEL) continue;
    const pv_model *m = &f->rec.model;
    const pv_falsifier *fs = m->falsification_tests.items;
    for (size_t i = 0; i < m->falsification_tests.n; i++)
      for (size_t j = 0; j < fs[i].criteria.n; j++) ns_add(&tested, (const pv_str *)fs[i].criteria.items + j);
    const pv_impl_stage *im = m->implementation_stages.items;
    for (size_t i = 0; i < m->implementation_stages.n; i++)
      for (size_t j = 0; j < im[i].falsifiers.n; j++) ns_add(&discharged, (const pv_str *)im[i].falsifiers.items + j);
  }
  if (tested.n) qsort(tested.v, tested.n, sizeof *tested.v, cmp_cstr);
  if (discharged.n) qsort(discharged.v, discharged.n, sizeof *discharged.v, cmp_cstr);
  for (size_t k = 0; k < set->n; k++) {
    pv_file *f = set->files[k];
    if (!f->loaded || !f->given || f->kind != PV_KIND_MODEL) continue;
    const pv_model *m = &f->rec.model;
    const pv_criterion *ac = m->acceptance_criteria.items;
    for (size_t i = 0; i < m->acceptance_criteria.n; i++)
      if (ac[i].id.node && !ns_has(&tested, ac[i].id.s))
        WARN(ac[i].id.node, "W201", "acceptance criterion %s is not tested by any falsification test", ac[i].id.s);
    const pv_falsifier *fs = m->falsification_tests.items;
    for (size_t i = 0; i < m->falsification_tests.n; i++)
      if (fs[i].id.node && !ns_has(&discharged, fs[i].id.s))
        WARN(fs[i].id.node, "W202", "falsification test %s is not listed by any implementation stage", fs[i].id.s);
  }
  free(tested.v);
  free(discharged.v);
}

void pv_check_cross(pv_set *set) {
  def_table t = { 0 };
  for (size_t k = 0; k < set->n; k++)
    if (set->files[k]->loaded) collect_defs(&t, set->files[k]);
  if (t.n) qsort(t.v, t.n, sizeof *t.v, cmp_def);
  report_dups(set, &t);
  size_t budget = 200; /* near-miss searches; enough for people, bounded for adversarial input */
  for (size_t k = 0; k < set->n; k++)
    if (set->files[k]->loaded) check_refs(set, &t, set->files[k], &budget);
  check_unused(set);
  free(t.v);
}
