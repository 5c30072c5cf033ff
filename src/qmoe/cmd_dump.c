/* cmd_dump.c: `qmoe dump FILE.gguf TENSOR [--rows A..B] --f32|--raw -o OUT`: writes rows of a tensor,
 * decoded to little-endian f32 by the generated dequant_row of its qtype (or its raw bytes). */
#include <stdlib.h>
#include <string.h>
#include "cmd.h"

static const char usage[] =
  "usage: qmoe dump FILE.gguf TENSOR [--rows A..B] (--f32 | --raw) -o OUT\n"
  "Writes rows of TENSOR (a row is ne[0] elements; rows count over ne[1]·ne[2]·ne[3]) to OUT ('-' for\n"
  "stdout). OUT is written to a temp file beside it and renamed into place when complete, so an error leaves\n"
  "no partial file and an old OUT intact; OUT must not be FILE.gguf (through links neither); a device such\n"
  "as /dev/null is written directly.\n"
  "  --f32        decode with qmoe's generated codec and write little-endian f32 (4 bytes per element)\n"
  "  --raw        write the stored bytes of the rows unchanged\n"
  "  --rows A..B  rows A to B-1 (also A, A.., ..B); default: all rows\n"
  "  -o OUT       output file ('-': stdout)\n"
  "example: qmoe dump model.gguf blk.0.attn_q.weight --rows 0..4 --f32 -o q.f32\n";

static int run(int argc, char **argv) {
  const char *path = NULL, *name = NULL, *rows = NULL, *out = NULL;
  const char *seen_mode = NULL, *seen_rows = NULL, *seen_out = NULL;
  int f32 = 0, raw = 0;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--f32") || !strcmp(argv[i], "--raw")) {
      if (seen_mode) {
        return !strcmp(seen_mode, argv[i]) ? cli_usage_error(&cmd_dump, "option %s given twice", argv[i])
                                           : cli_usage_error(&cmd_dump, "give exactly one of --f32 and --raw");
      }
      seen_mode = argv[i];
      if (argv[i][2] == 'f') f32 = 1;
      else raw = 1;
    } else if (!strcmp(argv[i], "--rows") || !strcmp(argv[i], "-o")) {
      if (i + 1 >= argc) return cli_usage_error(&cmd_dump, "%s needs a value", argv[i]);
      if (argv[i][1] == 'o') {
        if (cli_once(&cmd_dump, &seen_out, "-o")) return 2;
        out = argv[++i];
      } else {
        if (cli_once(&cmd_dump, &seen_rows, "--rows")) return 2;
        rows = argv[++i];
      }
    } else if (!strncmp(argv[i], "--rows=", 7)) {
      if (cli_once(&cmd_dump, &seen_rows, "--rows")) return 2;
      rows = argv[i] + 7;
    } else if (argv[i][0] == '-' && argv[i][1]) return cli_usage_error(&cmd_dump, "unknown option '%s'", argv[i]);
    else if (!path) path = argv[i];
    else if (!name) name = argv[i];
    else return cli_usage_error(&cmd_dump, "unexpected argument '%s'", argv[i]);
  }
  if (!path || !name) return cli_usage_error(&cmd_dump, "missing %s", path ? "TENSOR" : "FILE.gguf and TENSOR");
  if (f32 + raw != 1) return cli_usage_error(&cmd_dump, "give exactly one of --f32 and --raw");
  if (!out) return cli_usage_error(&cmd_dump, "missing -o OUT");

  qmoe_gguf *f;
  if (qmoe_gguf_open(path, &f) != 0) return cli_error("dump", "%s", qmoe_last_error());
  int rc = 1;
  qmoe_out *o = NULL;
  void *block_buf = NULL;
  float *row = NULL;
  const qmoe_gguf_tensor *t = qmoe_gguf_find_tensor(f, name);
  if (!t) {
    char msg[2048];
    cli_tensor_not_found(f, name, msg, sizeof msg);
    cli_error("dump", "%s", msg);
    goto done;
  }
  int64_t first = 0, end = t->n_rows;
  char why[256];
  if (rows && cli_parse_rows(rows, t->n_rows, &first, &end, why, sizeof why)) {
    cli_error("dump", "%s: tensor '%s': %s", path, t->name, why);
    goto done;
  }
  const qmoe_qtype_info *qt = NULL;
  if (f32) {
    qt = qmoe_qtype_by_id(t->type);
    if (!qt || !qt->dequant_row) {
      cli_error("dump", "%s: tensor '%s' is %s, which qmoe cannot decode (no contract for it in contracts/quant); --raw "
                "writes its bytes", path, t->name, t->type_name);
      goto done;
    }
  }
  uint64_t size = (uint64_t)(end - first) * (f32 ? 4 * (uint64_t)t->ne[0] : t->row_bytes);
  const char *inputs[1] = { path };
  if (qmoe_out_open(out, inputs, 1, size, &o) != 0) {
    cli_error("dump", "%s", qmoe_last_error());
    goto done;
  }
  /* Rows are copied to an aligned buffer first: a file with a small general.alignment may place them anywhere. */
  block_buf = malloc((size_t)t->row_bytes);
  row = malloc(sizeof(float) * (size_t)t->ne[0]);
  if (!block_buf || !row) {
    cli_error("dump", "out of memory for a row of %lld elements", (long long)t->ne[0]);
    goto done;
  }
  for (int64_t r = first; r < end; r++) {
    const unsigned char *src = (const unsigned char *)t->data + (uint64_t)r * t->row_bytes;
    if (raw) {
      if (qmoe_out_write(o, src, (size_t)t->row_bytes) != 0) goto write_error;
      continue;
    }
    memcpy(block_buf, src, (size_t)t->row_bytes);
    if (qt->dequant_row(block_buf, row, t->ne[0]) != 0) {
      cli_error("dump", "%s: tensor '%s' row %lld: %s", path, t->name, (long long)r, qmoe_last_error());
      goto done;
    }
    if (cli_write_f32le(o, row, t->ne[0])) goto write_error;
  }
  qmoe_out *done_o = o;
  o = NULL;
  if (qmoe_out_commit(done_o) != 0) goto write_error;
  rc = 0;
  goto done;
write_error:
  cli_error("dump", "%s", qmoe_last_error());
done:
  qmoe_out_abort(o); /* no partial output; a device or stdout is never removed */
  free(block_buf);
  free(row);
  qmoe_gguf_close(f);
  return rc;
}

const qmoe_command cmd_dump = { "dump", "write rows of a tensor as little-endian f32 (decoded) or raw bytes", usage, run };
