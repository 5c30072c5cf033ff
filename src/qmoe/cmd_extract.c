/* cmd_extract.c: `qmoe extract IN.gguf OUT.gguf --tensor NAME[:A..B]...`: copies chosen tensors (whole or
 * a range of rows, bytes unchanged) and the metadata into a new file written by qmoe's GGUF writer.
 * It cuts the test fixtures from real models. */
#include <stdlib.h>
#include <string.h>
#include "cmd.h"

static const char usage[] =
  "usage: qmoe extract IN.gguf OUT.gguf (--tensor NAME[:ROWS] ... | --all) [--max-array N] [--verbatim-names]\n"
  "Writes a GGUF v3 file with IN's metadata and the chosen tensors, in the order given. Tensor bytes are\n"
  "copied unchanged (same type). With :ROWS (A..B for rows A to B-1, A, A.., ..B) only those rows are\n"
  "copied and the tensor becomes 2-D [ne0, rows]; without, the whole tensor keeps its shape. OUT is written\n"
  "to a temp file and renamed into place; it must not be IN (through links neither).\n"
  "  --tensor NAME[:ROWS]  a tensor to copy (repeatable)\n"
  "  --all                 copy every tensor whole\n"
  "  --max-array N         keep only the first N elements of longer metadata arrays (to make small fixtures)\n"
  "  --verbatim-names      copy keys and tensor names that are not valid UTF-8 as they are (default: refuse)\n"
  "example: qmoe extract model.gguf slice.gguf --tensor blk.0.attn_q.weight:0..16 --tensor output_norm.weight\n";

typedef struct {
  const qmoe_gguf_tensor *t;
  int64_t first, end;
  int sliced;
} pick;

static int run(int argc, char **argv) {
  const char *in = NULL, *out = NULL;
  const char **specs = calloc((size_t)argc, sizeof *specs);
  int n_specs = 0, all = 0, rc = 1, verbatim = 0;
  const char *seen_all = NULL, *seen_max = NULL, *seen_verbatim = NULL;
  int64_t max_array = -1;
  qmoe_gguf *f = NULL;
  qmoe_gguf_writer *w = NULL;
  pick *picks = NULL;
  if (!specs) return cli_error("extract", "out of memory");
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--tensor") || !strcmp(argv[i], "--max-array")) {
      if (i + 1 >= argc) {
        rc = cli_usage_error(&cmd_extract, "%s needs a value", argv[i]);
        goto done;
      }
      if (argv[i][2] == 't') specs[n_specs++] = argv[++i];
      else if (cli_once(&cmd_extract, &seen_max, "--max-array")) {
        rc = 2;
        goto done;
      } else if (cli_parse_i64(argv[++i], &max_array)) {
        rc = cli_usage_error(&cmd_extract, "--max-array needs a non-negative integer, not '%s'", argv[i]);
        goto done;
      }
    } else if (!strcmp(argv[i], "--all") || !strcmp(argv[i], "--verbatim-names")) {
      int is_all = argv[i][2] == 'a';
      if (cli_once(&cmd_extract, is_all ? &seen_all : &seen_verbatim, argv[i])) {
        rc = 2;
        goto done;
      }
      if (is_all) all = 1;
      else verbatim = 1;
    }
    else if (argv[i][0] == '-' && argv[i][1]) {
      rc = cli_usage_error(&cmd_extract, "unknown option '%s'", argv[i]);
      goto done;
    } else if (!in) in = argv[i];
    else if (!out) out = argv[i];
    else {
      rc = cli_usage_error(&cmd_extract, "unexpected argument '%s'", argv[i]);
      goto done;
    }
  }
  if (!in || !out) {
    rc = cli_usage_error(&cmd_extract, "missing %s", in ? "OUT.gguf" : "IN.gguf and OUT.gguf");
    goto done;
  }
  if (!all == !n_specs) {
    rc = cli_usage_error(&cmd_extract, "give --tensor NAME[:ROWS] (one or more) or --all");
    goto done;
  }
  if (qmoe_gguf_open(in, &f) != 0) {
    cli_error("extract", "%s", qmoe_last_error());
    goto done;
  }
  int64_t n_picks = all ? qmoe_gguf_tensor_count(f) : n_specs;
  picks = calloc((size_t)(n_picks ? n_picks : 1), sizeof *picks);
  if (!picks) {
    cli_error("extract", "out of memory");
    goto done;
  }
  for (int64_t i = 0; i < n_picks; i++) {
    pick *p = &picks[i];
    if (all) {
      p->t = qmoe_gguf_tensor_at(f, i);
    } else {
      char name[512];
      const char *colon = strrchr(specs[i], ':');
      size_t n = colon ? (size_t)(colon - specs[i]) : strlen(specs[i]);
      if (n >= sizeof name) {
        cli_error("extract", "tensor name '%.40s...' is too long", specs[i]);
        goto done;
      }
      memcpy(name, specs[i], n);
      name[n] = 0;
      p->t = qmoe_gguf_find_tensor(f, name);
      if (!p->t) {
        char msg[2048];
        cli_tensor_not_found(f, name, msg, sizeof msg);
        cli_error("extract", "%s", msg);
        goto done;
      }
      if (colon) {
        char why[256];
        if (cli_parse_rows(colon + 1, p->t->n_rows, &p->first, &p->end, why, sizeof why)) {
          cli_error("extract", "%s: tensor '%s': %s", in, name, why);
          goto done;
        }
        p->sliced = 1;
      }
    }
    if (!p->sliced) p->first = 0, p->end = p->t->n_rows;
  }

  w = qmoe_gguf_writer_new();
  qmoe_gguf_writer_add_input(w, in);
  qmoe_gguf_writer_set_verbatim_names(w, verbatim);
  for (int64_t i = 0; i < qmoe_gguf_kv_count(f); i++) {
    const qmoe_gguf_value *v = qmoe_gguf_kv_value(f, i);
    qmoe_gguf_value cut = *v;
    if (v->type == QMOE_GGUF_ARRAY && max_array >= 0 && v->count > (uint64_t)max_array &&
        qmoe_gguf_array_prefix(v, (uint64_t)max_array, &cut) != 0) {
      cli_error("extract", "%s", qmoe_last_error());
      goto done;
    }
    if (qmoe_gguf_writer_set_value(w, qmoe_gguf_kv_key(f, i), &cut) != 0) {
      cli_writer_error("extract", in);
      goto done;
    }
  }
  for (int64_t i = 0; i < n_picks; i++) {
    const pick *p = &picks[i];
    int64_t ne[4] = { p->t->ne[0], p->end - p->first, 1, 1 };
    const unsigned char *data = (const unsigned char *)p->t->data + (uint64_t)p->first * p->t->row_bytes;
    int r = p->sliced ? qmoe_gguf_writer_add_tensor(w, p->t->name, p->t->type, 2, ne, data)
                      : qmoe_gguf_writer_add_tensor(w, p->t->name, p->t->type, p->t->n_dims, p->t->ne, data);
    if (r != 0) {
      cli_writer_error("extract", in);
      goto done;
    }
  }
  if (qmoe_gguf_writer_write(w, out) != 0) {
    cli_error("extract", "%s", qmoe_last_error());
    goto done;
  }
  rc = 0;
done:
  qmoe_gguf_writer_free(w);
  qmoe_gguf_close(f);
  free(picks);
  free(specs);
  return rc;
}

const qmoe_command cmd_extract = { "extract", "copy chosen tensors (or row ranges of them) and the metadata to a new file",
                                   usage, run };
