/* trace_record.c: record a trace on one backend and write it as a trace file (see trace_record.h). */
#include <stdlib.h>
#include <string.h>
#include "backend.h"
#include "cli.h"
#include "trace_record.h"

typedef struct {
  int64_t n_layers, n_pos;
  void **data; /* [point][layer or 0]: n_pos · elements values of 4 bytes */
} store;

static void **slot(store *s, int p, int64_t l) { return &s->data[(size_t)p * (size_t)s->n_layers + (size_t)(l < 0 ? 0 : l)]; }

static int on_trace(void *user, int point, int64_t layer, int64_t pos, const void *data, int64_t n) {
  store *s = user;
  void **d = slot(s, point, layer);
  if (!*d && !(*d = calloc((size_t)(n * s->n_pos), 4))) {
    qmoe_set_error("trace: out of host memory");
    return QMOE_EINVAL;
  }
  memcpy((char *)*d + (size_t)(pos * n) * 4, data, (size_t)n * 4);
  return 0;
}

void cli_trace_list_points(FILE *fp) {
  for (int i = 0; i < QMOE_TP_COUNT; i++)
    fprintf(fp, "  %-16s %-6s %-24s %s\n", qmoe_trace_points[i].name, qmoe_trace_points[i].per_layer ? "layer" : "model",
            qmoe_trace_points[i].elements, qmoe_trace_points[i].doc);
}

int cli_trace_parse_points(const char *cmd, const char *list, unsigned char points[QMOE_TP_COUNT]) {
  memset(points, 0, QMOE_TP_COUNT);
  if (!strcmp(list, "all")) {
    memset(points, 1, QMOE_TP_COUNT);
    return 0;
  }
  for (const char *p = list; *p;) {
    const char *e = strchr(p, ',');
    size_t len = e ? (size_t)(e - p) : strlen(p);
    char name[64];
    int k = -1;
    if (len < sizeof name) {
      memcpy(name, p, len);
      name[len] = 0;
      k = qmoe_trace_point_find(name);
    }
    if (k < 0) {
      cli_error(cmd, "--stages: unknown trace point '%.*s'; the valid ones are:", (int)(len < 64 ? len : 64), p);
      cli_trace_list_points(stderr);
      return 1;
    }
    points[k] = 1;
    p = e ? e + 1 : p + len;
  }
  return 0;
}

int cli_trace_record(const char *cmd, const char *model_path, const char *backend, int acc, int64_t n_ctx,
                     const unsigned char points[QMOE_TP_COUNT], int64_t first, int64_t end, const int32_t *ids,
                     size_t n_ids, const char *out, int quiet) {
  qmoe_backend *be = NULL;
  qmoe_model *m = NULL;
  store ts = { 0 };
  qmoe_gguf_writer *w = NULL;
  unsigned char *layers = NULL;
  int rc = 1;
  if (cli_open_model(cmd, model_path, backend, n_ctx, (int64_t)n_ids, acc, quiet, &be, &m)) goto done;
  const qmoe_model_config *c = qmoe_model_config_of(m);
  if (end < 0 || end > c->n_layers) end = c->n_layers;
  layers = calloc((size_t)c->n_layers, 1);
  ts.n_layers = c->n_layers, ts.n_pos = (int64_t)n_ids;
  ts.data = calloc((size_t)(QMOE_TP_COUNT * c->n_layers), sizeof(void *));
  if (!layers || !ts.data) {
    cli_error(cmd, "out of memory");
    goto done;
  }
  for (int64_t l = first; l < end; l++) layers[l] = 1;
  qmoe_model_set_trace(m, points, layers, on_trace, &ts);
  for (size_t i = 0; i < n_ids; i++)
    if (ids[i] < 0 || ids[i] >= c->n_vocab) {
      cli_error(cmd, "token %ld (position %zu) is outside the vocabulary (0..%lld)", (long)ids[i], i, (long long)c->n_vocab - 1);
      goto done;
    }
  /* the same prefill `qmoe trace` runs; traced result_* points make it run lm_head at every position */
  if (qmoe_model_prefill(m, ids, (int64_t)n_ids, 0, NULL, NULL)) {
    cli_error(cmd, "%s: %s", backend, qmoe_last_error());
    goto done;
  }
  w = qmoe_gguf_writer_new();
  char source[128];
  snprintf(source, sizeof source, "qmoe %s %s", backend, qmoe_acc_name(acc));
  const char *bn = strrchr(model_path, '/') ? strrchr(model_path, '/') + 1 : model_path;
  if (!w || qmoe_gguf_writer_add_input(w, model_path) || qmoe_gguf_writer_set_u32(w, "qmoe.trace.version", 1) ||
      qmoe_gguf_writer_set_str(w, "qmoe.trace.source", source, strlen(source)) ||
      qmoe_gguf_writer_set_str(w, "qmoe.trace.model", bn, strlen(bn)) ||
      qmoe_gguf_writer_set_u32(w, "qmoe.trace.n_layers", (uint32_t)c->n_layers) ||
      qmoe_gguf_writer_set_array(w, "qmoe.trace.tokens", QMOE_GGUF_I32, ids, n_ids)) {
    cli_error(cmd, "%s", qmoe_last_error());
    goto done;
  }
  int64_t dims[QMOE_TRACE_DIM_COUNT] = {
    [QMOE_TRACE_DIM_HIDDEN] = c->n_embd, [QMOE_TRACE_DIM_HEADS] = c->n_head, [QMOE_TRACE_DIM_KV_HEADS] = c->n_head_kv,
    [QMOE_TRACE_DIM_HEAD_DIM] = c->head_dim, [QMOE_TRACE_DIM_EXPERTS] = c->n_expert,
    [QMOE_TRACE_DIM_EXPERTS_USED] = c->n_expert_used, [QMOE_TRACE_DIM_EXPERT_FF] = c->expert_ff,
    [QMOE_TRACE_DIM_VOCAB] = c->n_vocab };
  /* Tensors in forward order: model points listed before the first per-layer point, the layers, the rest. */
  int first_layer_point = QMOE_TP_COUNT;
  for (int p = QMOE_TP_COUNT - 1; p >= 0; p--)
    if (qmoe_trace_points[p].per_layer) first_layer_point = p;
  int64_t n_tensors = 0;
  for (int pass = 0; pass < 3; pass++)
    for (int64_t l = pass == 1 ? 0 : -1; l < (pass == 1 ? c->n_layers : 0); l++)
      for (int p = 0; p < QMOE_TP_COUNT; p++) {
        const qmoe_trace_point *tp = &qmoe_trace_points[p];
        if (tp->per_layer != (pass == 1) || !*slot(&ts, p, l)) continue;
        if (pass == 0 && p > first_layer_point) continue;
        if (pass == 2 && p < first_layer_point) continue;
        char name[96];
        if (tp->per_layer) snprintf(name, sizeof name, "blk.%lld.%s", (long long)l, tp->name);
        else snprintf(name, sizeof name, "%s", tp->name);
        int64_t ne[2] = { qmoe_trace_point_elements(p, dims), (int64_t)n_ids };
        if (qmoe_gguf_writer_add_tensor(w, name, tp->is_i32 ? 26 : 0, 2, ne, *slot(&ts, p, l))) {
          cli_error(cmd, "%s", qmoe_last_error());
          goto done;
        }
        n_tensors++;
      }
  if (qmoe_gguf_writer_write(w, out)) {
    cli_error(cmd, "%s", qmoe_last_error());
    goto done;
  }
  if (!quiet) fprintf(stderr, "qmoe %s: wrote %lld tensors (%zu positions) to %s\n", cmd, (long long)n_tensors, n_ids, out);
  rc = 0;
done:
  if (ts.data) {
    for (int64_t i = 0; i < QMOE_TP_COUNT * ts.n_layers; i++) free(ts.data[i]);
    free(ts.data);
  }
  free(layers);
  qmoe_gguf_writer_free(w);
  cli_close_model(be, m);
  return rc;
}
