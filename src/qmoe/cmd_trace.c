/* cmd_trace.c: `qmoe trace`: runs the prefill of the given tokens with the model's trace hooks on and writes
 * the chosen trace points (per layer and position) to a GGUF file in the trace format of docs/model.md. */
#include <stdlib.h>
#include <string.h>
#include "backend.h"
#include "cmd.h"
#include "trace_points.h"

static const char usage[] =
  "usage: qmoe trace -m FILE [--backend B] (-p TEXT | --tokens IDS) [--acc f32|f64] [--stages LIST|all]\n"
  "                  [--layers A..B|all] [--ctx N] -o TRACE.gguf\n"
  "Feeds the tokens through the model (prefill, one position at a time) and records the output of every\n"
  "chosen stage at every chosen layer and position into TRACE.gguf: tensors blk.<L>.<point> (per-layer\n"
  "points) and <point>, each [elements, positions], F32 (I32 for ffn_moe_topk); metadata qmoe.trace.*.\n"
  "  --stages LIST    comma-separated trace points (default all); `qmoe trace --stages list` prints them\n"
  "  --layers R       layers A..B (A to B-1), A, A.., ..B or all (default all)\n"
  "  other options as in `qmoe run`\n"
  "example: qmoe trace -m build/models/tiny.gguf --tokens 1,2,3 --stages l_out,ffn_moe_topk -o trace.gguf\n";

enum { O_M, O_BACKEND, O_P, O_TOKENS, O_ACC, O_STAGES, O_LAYERS, O_CTX, O_OUT, O_N_ };

typedef struct {
  int64_t n_layers, n_pos;
  int64_t elems[QMOE_TP_COUNT];
  void **data; /* [point][layer or 0]: n_pos * elems values */
} trace_store;

static void **slot(trace_store *s, int p, int64_t l) {
  return &s->data[(size_t)p * (size_t)s->n_layers + (size_t)(l < 0 ? 0 : l)];
}

static int on_trace(void *user, int point, int64_t layer, int64_t pos, const void *data, int64_t n) {
  trace_store *s = user;
  void **d = slot(s, point, layer);
  if (!*d && !(*d = calloc((size_t)(n * s->n_pos), 4))) {
    qmoe_set_error("trace: out of host memory");
    return QMOE_ENOMEM;
  }
  memcpy((char *)*d + (size_t)(pos * n) * 4, data, (size_t)n * 4);
  return 0;
}

static void list_points(FILE *fp) {
  for (int i = 0; i < QMOE_TP_COUNT; i++)
    fprintf(fp, "  %-16s %-6s %-24s %s\n", qmoe_trace_points[i].name, qmoe_trace_points[i].per_layer ? "layer" : "model",
            qmoe_trace_points[i].elements, qmoe_trace_points[i].doc);
}

static const char *base_name(const char *p) {
  const char *s = strrchr(p, '/');
  return s ? s + 1 : p;
}

static int run(int argc, char **argv) {
  cli_opt o[O_N_] = {
    [O_M] = { "-m", "--model", 1 }, [O_BACKEND] = { "--backend", NULL, 1 }, [O_P] = { "-p", "--prompt", 1 },
    [O_TOKENS] = { "--tokens", NULL, 1 }, [O_ACC] = { "--acc", NULL, 1 }, [O_STAGES] = { "--stages", NULL, 1 },
    [O_LAYERS] = { "--layers", NULL, 1 }, [O_CTX] = { "--ctx", NULL, 1 }, [O_OUT] = { "-o", "--output", 1 },
  };
  int rc = cli_parse_opts(&cmd_trace, argc, argv, o, O_N_);
  if (rc) return rc;
  if (o[O_STAGES].value && !strcmp(o[O_STAGES].value, "list")) {
    list_points(stdout);
    return 0;
  }
  if (!o[O_M].value) return cli_usage_error(&cmd_trace, "missing -m FILE");
  if (!o[O_OUT].value) return cli_usage_error(&cmd_trace, "missing -o TRACE.gguf");
  if (!o[O_P].value == !o[O_TOKENS].value) return cli_usage_error(&cmd_trace, "give -p TEXT or --tokens IDS");
  const char *path = o[O_M].value, *out = o[O_OUT].value;
  const char *backend = o[O_BACKEND].value ? o[O_BACKEND].value : "cpu";
  int acc;
  int64_t n_ctx = 0;
  if (cli_parse_acc("trace", o[O_ACC].value, &acc)) return 1;
  if (o[O_CTX].value && cli_parse_count("trace", "--ctx", o[O_CTX].value, 1, 1 << 24, &n_ctx)) return 1;
  /* Refuse an output that is the model, or in a directory we cannot write, before any work (the writer
   * checks again when it writes). */
  qmoe_out *probe;
  if (qmoe_out_open(out, (const char *const[]){ path }, 1, 0, &probe))
    return cli_error("trace", "%s", qmoe_last_error());
  qmoe_out_abort(probe);
  unsigned char points[QMOE_TP_COUNT] = {0};
  const char *st = o[O_STAGES].value ? o[O_STAGES].value : "all";
  if (!strcmp(st, "all")) memset(points, 1, sizeof points);
  else {
    for (const char *p = st; *p;) {
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
        cli_error("trace", "--stages: unknown trace point '%.*s'; the valid ones are:", (int)len, p);
        list_points(stderr);
        return 1;
      }
      points[k] = 1;
      p = e ? e + 1 : p + len;
    }
  }
  int32_t *ids = NULL;
  size_t n_ids = 0;
  if (cli_prompt_ids("trace", path, o[O_P].value, o[O_TOKENS].value, 0, &ids, &n_ids)) return 1;
  qmoe_backend *be = NULL;
  qmoe_model *m = NULL;
  trace_store ts = {0};
  qmoe_gguf_writer *w = NULL;
  rc = 1;
  if (cli_open_model("trace", path, backend, n_ctx, (int64_t)n_ids, acc, 0, &be, &m)) goto done;
  const qmoe_model_config *c = qmoe_model_config_of(m);
  int64_t first = 0, end = c->n_layers;
  const char *lr = o[O_LAYERS].value;
  if (lr && strcmp(lr, "all")) {
    char why[256];
    if (cli_parse_rows(lr, c->n_layers, &first, &end, why, sizeof why)) {
      cli_error("trace", "--layers '%s': expected A..B (layers A to B-1), A, A.., ..B or all, within the model's "
                "%lld layers (0..%lld)", lr, (long long)c->n_layers, (long long)c->n_layers - 1);
      goto done;
    }
  }
  unsigned char *layers = calloc((size_t)c->n_layers, 1);
  ts.n_layers = c->n_layers, ts.n_pos = (int64_t)n_ids;
  ts.data = calloc((size_t)(QMOE_TP_COUNT * c->n_layers), sizeof(void *));
  if (!layers || !ts.data) {
    free(layers);
    cli_error("trace", "out of memory");
    goto done;
  }
  for (int64_t l = first; l < end; l++) layers[l] = 1;
  qmoe_model_set_trace(m, points, layers, on_trace, &ts);
  free(layers);
  if (qmoe_model_prefill(m, ids, (int64_t)n_ids, 0, NULL, NULL)) {
    cli_error("trace", "%s", qmoe_last_error());
    goto done;
  }
  w = qmoe_gguf_writer_new();
  char source[128];
  snprintf(source, sizeof source, "qmoe %s %s", backend, acc == QMOE_ACC_F64 ? "f64" : "f32");
  const char *bn = base_name(path);
  /* The trace can never replace the model: the writer refuses an output that is one of its inputs. */
  if (!w || qmoe_gguf_writer_add_input(w, path) || qmoe_gguf_writer_set_u32(w, "qmoe.trace.version", 1) ||
      qmoe_gguf_writer_set_str(w, "qmoe.trace.source", source, strlen(source)) ||
      qmoe_gguf_writer_set_str(w, "qmoe.trace.model", bn, strlen(bn)) ||
      qmoe_gguf_writer_set_u32(w, "qmoe.trace.n_layers", (uint32_t)c->n_layers) ||
      qmoe_gguf_writer_set_array(w, "qmoe.trace.tokens", QMOE_GGUF_I32, ids, n_ids)) {
    cli_error("trace", "%s", qmoe_last_error());
    goto done;
  }
  int64_t dims[QMOE_TRACE_DIM_COUNT] = {
    [QMOE_TRACE_DIM_HIDDEN] = c->n_embd, [QMOE_TRACE_DIM_HEADS] = c->n_head, [QMOE_TRACE_DIM_KV_HEADS] = c->n_head_kv,
    [QMOE_TRACE_DIM_HEAD_DIM] = c->head_dim, [QMOE_TRACE_DIM_EXPERTS] = c->n_expert,
    [QMOE_TRACE_DIM_EXPERTS_USED] = c->n_expert_used, [QMOE_TRACE_DIM_EXPERT_FF] = c->expert_ff,
    [QMOE_TRACE_DIM_VOCAB] = c->n_vocab };
  int64_t n_tensors = 0;
  for (int64_t l = -1; l < c->n_layers; l++) /* model points first (inp_embd), then layer by layer */
    for (int p = 0; p < QMOE_TP_COUNT; p++) {
      const qmoe_trace_point *tp = &qmoe_trace_points[p];
      if ((l < 0) == tp->per_layer || !*slot(&ts, p, l)) continue;
      if (l < 0 && p > QMOE_TP_INP_EMBD) continue; /* result_* after the layers */
      char name[96];
      if (tp->per_layer) snprintf(name, sizeof name, "blk.%lld.%s", (long long)l, tp->name);
      else snprintf(name, sizeof name, "%s", tp->name);
      int64_t ne[2] = { qmoe_trace_point_elements(p, dims), (int64_t)n_ids };
      if (qmoe_gguf_writer_add_tensor(w, name, tp->is_i32 ? 26 : 0, 2, ne, *slot(&ts, p, l))) {
        cli_error("trace", "%s", qmoe_last_error());
        goto done;
      }
      n_tensors++;
    }
  for (int p = QMOE_TP_INP_EMBD + 1; p < QMOE_TP_COUNT; p++) {
    const qmoe_trace_point *tp = &qmoe_trace_points[p];
    if (tp->per_layer || !*slot(&ts, p, -1)) continue;
    int64_t ne[2] = { qmoe_trace_point_elements(p, dims), (int64_t)n_ids };
    if (qmoe_gguf_writer_add_tensor(w, tp->name, tp->is_i32 ? 26 : 0, 2, ne, *slot(&ts, p, -1))) {
      cli_error("trace", "%s", qmoe_last_error());
      goto done;
    }
    n_tensors++;
  }
  if (qmoe_gguf_writer_write(w, out)) {
    cli_error("trace", "%s", qmoe_last_error());
    goto done;
  }
  fprintf(stderr, "qmoe trace: wrote %lld tensors (%zu positions) to %s\n", (long long)n_tensors, n_ids, out);
  rc = 0;
done:
  if (ts.data) {
    for (int64_t i = 0; i < QMOE_TP_COUNT * ts.n_layers; i++) free(ts.data[i]);
    free(ts.data);
  }
  qmoe_gguf_writer_free(w);
  free(ids);
  cli_close_model(be, m);
  return rc;
}

const qmoe_command cmd_trace = { "trace", "records chosen stage outputs of a qwen3moe forward to a GGUF file", usage,
                                 run };
