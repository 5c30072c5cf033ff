/* cmd_trace.c: `qmoe trace`: runs the prefill of the given tokens with the model's trace hooks on and writes
 * the chosen trace points (per layer and position) to a GGUF file in the trace format of docs/model.md. */
#include <stdlib.h>
#include <string.h>
#include "backend.h"
#include "cmd.h"
#include "trace_points.h"
#include "trace_record.h"

static const char usage[] =
  "usage: qmoe trace -m FILE [--backend B] (-p TEXT | --tokens IDS) [--acc f32|f64|q8] [--stages LIST|all]\n"
  "                  [--layers A..B|all] [--ctx N] -o TRACE.gguf\n"
  "Feeds the tokens through the model (prefill, one position at a time) and records the output of every\n"
  "chosen stage at every chosen layer and position into TRACE.gguf: tensors blk.<L>.<point> (per-layer\n"
  "points) and <point>, each [elements, positions], F32 (I32 for ffn_moe_topk); metadata qmoe.trace.*.\n"
  "  --stages LIST    comma-separated trace points (default all); `qmoe trace --stages list` prints them\n"
  "  --layers R       layers A..B (A to B-1), A, A.., ..B or all (default all)\n"
  "  other options as in `qmoe run`\n"
  "example: qmoe trace -m build/models/tiny.gguf --tokens 1,2,3 --stages l_out,ffn_moe_topk -o trace.gguf\n";

enum { O_M, O_BACKEND, O_P, O_TOKENS, O_ACC, O_STAGES, O_LAYERS, O_CTX, O_OUT, O_N_ };

static int run(int argc, char **argv) {
  cli_opt o[O_N_] = {
    [O_M] = { "-m", "--model", 1 }, [O_BACKEND] = { "--backend", NULL, 1 }, [O_P] = { "-p", "--prompt", 1 },
    [O_TOKENS] = { "--tokens", NULL, 1 }, [O_ACC] = { "--acc", NULL, 1 }, [O_STAGES] = { "--stages", NULL, 1 },
    [O_LAYERS] = { "--layers", NULL, 1 }, [O_CTX] = { "--ctx", NULL, 1 }, [O_OUT] = { "-o", "--output", 1 },
  };
  int rc = cli_parse_opts(&cmd_trace, argc, argv, o, O_N_);
  if (rc) return rc;
  if (o[O_STAGES].value && !strcmp(o[O_STAGES].value, "list")) {
    cli_trace_list_points(stdout);
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
  unsigned char points[QMOE_TP_COUNT];
  if (cli_trace_parse_points("trace", o[O_STAGES].value ? o[O_STAGES].value : "all", points)) return 1;
  /* The layer count, to read --layers against, from the file's checked config (nothing allocated). */
  qmoe_gguf *f;
  qmoe_model_config c;
  if (qmoe_gguf_open(path, &f)) return cli_error("trace", "%s", qmoe_last_error());
  rc = qmoe_model_check(f, &c);
  qmoe_gguf_close(f);
  if (rc) return cli_error("trace", "%s", qmoe_last_error());
  int64_t first = 0, end = c.n_layers;
  const char *lr = o[O_LAYERS].value;
  if (lr && strcmp(lr, "all")) {
    char why[256];
    if (cli_parse_rows(lr, c.n_layers, &first, &end, why, sizeof why))
      return cli_error("trace", "--layers '%s': expected A..B (layers A to B-1), A, A.., ..B or all, within the "
                       "model's %lld layers (0..%lld)", lr, (long long)c.n_layers, (long long)c.n_layers - 1);
  }
  int32_t *ids = NULL;
  size_t n_ids = 0;
  if (cli_prompt_ids("trace", path, o[O_P].value, o[O_TOKENS].value, 0, &ids, &n_ids)) return 1;
  rc = cli_trace_record("trace", path, backend, acc, n_ctx, points, first, end, ids, n_ids, out, 0);
  free(ids);
  return rc;
}

const qmoe_command cmd_trace = { "trace", "records chosen stage outputs of a qwen3moe forward to a GGUF file", usage,
                                 run };
