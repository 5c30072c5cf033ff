/* cmd_quantize.c: `qmoe quantize IN.gguf OUT.gguf TYPE`: re-encodes a model's tensors as one qtype or by
 * the Q4_K_M recipe (docs/gguf.md), with qmoe's generated codecs: every source tensor is decoded to f32
 * and quantized again, unless it already has its target type (then its bytes are copied). */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "cmd.h"

static const char usage[] =
  "usage: qmoe quantize IN.gguf OUT.gguf TYPE [--threads N] [--verbatim-names]\n"
  "Writes OUT with IN's metadata and every tensor re-encoded. TYPE is a qtype with a quantizer (f32, f16,\n"
  "bf16, q4_0, q4_1, q5_0, q8_0, q4_k, q5_k, q6_k, ...; spelled q6k, q6_k or Q6_K) or a recipe of\n"
  "contracts/recipes, such as q4_k_m, llama.cpp's (contracts/recipes/q4_k_m.yaml):\n"
  "  blk.i.ffn_down_exps / ffn_down / attn_v: Q6_K when i < n/8, i >= 7n/8 or (i - n/8) % 3 == 2, else Q4_K\n"
  "  output.weight: Q6_K; every other matrix (token_embd, attn_q/k/output, ffn_gate/up_exps, ...): Q4_K\n"
  "(n = <arch>.block_count). 1-D tensors (norms) and the MoE router ffn_gate_inp always stay F32. The recipe\n"
  "is qwen3moe's; for another architecture it is applied by tensor name, and a note says so.\n"
  "Source tensors of any type qmoe can decode are decoded to f32 first; a tensor that already has its\n"
  "target type is copied unchanged. A tensor whose rows the target type cannot hold (row length not a\n"
  "multiple of its block size) stops the command before anything is written. Every encoded row is decoded\n"
  "again and checked: a value the target cannot represent (not finite, out of its range, or collapsing to\n"
  "zero) stops the command, naming the tensor, row and value, and no output is left. Sets general.file_type\n"
  "and general.quantization_version. Progress goes to stderr. OUT is written to a temp file and renamed\n"
  "into place; it must not be IN (through links neither).\n"
  "  --threads N, -j N  quantize with N threads (default: the online CPUs); the output does not depend on N\n"
  "  --verbatim-names   copy keys and tensor names that are not valid UTF-8 as they are (default: refuse)\n"
  "example: qmoe quantize model-f16.gguf model-q4_k_m.gguf q4_k_m\n";

/* llama.cpp's general.file_type (enum llama_ftype) of what this command writes comes from the contracts: the
 * qtype's file_type (contracts/quant), or the recipe's (contracts/recipes); -1: llama.cpp has none. */

/* "blk.N.REST" -> N and REST; -1 if the name is not a layer tensor. */
static int64_t layer_of(const char *name, const char **rest) {
  if (strncmp(name, "blk.", 4)) return -1;
  int64_t n = 0;
  const char *p = name + 4;
  if (*p < '0' || *p > '9') return -1;
  while (*p >= '0' && *p <= '9') {
    if (n > 100000000) return -1;
    n = n * 10 + (*p++ - '0');
  }
  if (*p != '.') return -1;
  *rest = p + 1;
  return n;
}

static int is_router(const char *name) {
  const char *rest;
  return layer_of(name, &rest) >= 0 && !strncmp(rest, "ffn_gate_inp.", 13);
}

typedef struct {
  const qmoe_gguf_tensor *t;
  const qmoe_qtype_info *src, *dst;
} plan;

/* Rows [r0, r1) of one tensor, decoded and re-encoded by one thread into out (row r at (r - r0)·dst_row). Rows
 * are independent, so the output does not depend on how many threads share a batch. */
typedef struct {
  const plan *p;
  int64_t r0, r1;
  uint64_t dst_row;
  unsigned char *out;
  float *row, *dec;
  void *src;
  int rc;
  int64_t bad_row;
  char err[512];
} job;

static void *run_job(void *arg) {
  job *j = arg;
  const qmoe_gguf_tensor *t = j->p->t;
  for (int64_t r = j->r0; r < j->r1; r++) {
    memcpy(j->src, (const unsigned char *)t->data + (uint64_t)r * t->row_bytes, (size_t)t->row_bytes);
    unsigned char *enc = j->out + (uint64_t)(r - j->r0) * j->dst_row;
    if (j->p->src->dequant_row(j->src, j->row, t->ne[0]) != 0 ||
        j->p->dst->quantize_row(j->row, enc, t->ne[0]) != 0 ||
        qmoe_qtype_check_row(j->p->dst, j->row, enc, t->ne[0], j->dec) != 0) {
      j->rc = -1;
      j->bad_row = r;
      snprintf(j->err, sizeof j->err, "%s", qmoe_last_error()); /* the error is thread-local */
      return NULL;
    }
  }
  return NULL;
}

enum { MAX_THREADS = 64, BATCH_ELEMENTS = 1 << 22 };

static int run(int argc, char **argv) {
  const char *in = NULL, *out = NULL, *type = NULL;
  long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
  int64_t n_threads = ncpu < 1 ? 1 : ncpu > MAX_THREADS ? MAX_THREADS : ncpu;
  const char *threads_opt = NULL;
  int verbatim = 0;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--threads") || !strcmp(argv[i], "-j")) {
      if (threads_opt) return cli_usage_error(&cmd_quantize, "%s given twice (%s was already given)", argv[i], threads_opt);
      threads_opt = argv[i];
      if (i + 1 >= argc || cli_parse_i64(argv[i + 1], &n_threads) || n_threads < 1 || n_threads > MAX_THREADS)
        return cli_usage_error(&cmd_quantize, "%s needs a number of threads from 1 to %d", argv[i], MAX_THREADS);
      i++;
      continue;
    }
    if (!strcmp(argv[i], "--verbatim-names")) {
      if (verbatim) return cli_usage_error(&cmd_quantize, "--verbatim-names given twice");
      verbatim = 1;
      continue;
    }
    if (argv[i][0] == '-' && argv[i][1]) return cli_usage_error(&cmd_quantize, "unknown option '%s'", argv[i]);
    if (!in) in = argv[i];
    else if (!out) out = argv[i];
    else if (!type) type = argv[i];
    else return cli_usage_error(&cmd_quantize, "unexpected argument '%s'", argv[i]);
  }
  if (!type) return cli_usage_error(&cmd_quantize, "need IN.gguf OUT.gguf TYPE");
  const qmoe_qtype_info *f32 = qmoe_qtype_by_name("f32"), *single = NULL;
  const qmoe_recipe *recipe = qmoe_recipe_by_name(type);
  if (!recipe) {
    single = qmoe_qtype_by_name(type);
    if (!single || !single->quantize_row) {
      char known[512];
      int n = 0;
      known[0] = 0;
      for (size_t i = 0; i < qmoe_qtype_count() && n >= 0 && (size_t)n < sizeof known; i++)
        if (qmoe_qtype_at(i)->quantize_row) n += snprintf(known + n, sizeof known - (size_t)n, "%s ", qmoe_qtype_at(i)->name);
      for (size_t i = 0; i < qmoe_recipe_count() && n >= 0 && (size_t)n < sizeof known; i++)
        n += snprintf(known + n, sizeof known - (size_t)n, "%s%s", i ? " " : "", qmoe_recipe_name(qmoe_recipe_at(i)));
      return cli_usage_error(&cmd_quantize, "TYPE '%s' is not a qtype qmoe can quantize to or a recipe; choose one of: %s", type, known);
    }
  }
  if (!f32 || !f32->quantize_row) return cli_error("quantize", "this build has no f32 codec");

  qmoe_gguf *f;
  if (qmoe_gguf_open(in, &f) != 0) return cli_error("quantize", "%s", qmoe_last_error());
  int rc = 1;
  qmoe_gguf_writer *w = NULL;
  float *rows[MAX_THREADS] = { 0 }, *decs[MAX_THREADS] = { 0 };
  void *srcs[MAX_THREADS] = { 0 };
  unsigned char *batch = NULL;
  int64_t nt = qmoe_gguf_tensor_count(f);
  plan *plans = calloc((size_t)(nt ? nt : 1), sizeof *plans);
  if (!plans) {
    cli_error("quantize", "out of memory");
    goto done;
  }

  /* The recipe needs the layer count: <arch>.block_count, else the highest blk.N + 1. */
  int64_t n_layers = 0;
  const char *arch = NULL;
  uint64_t arch_len = 0;
  int is_qwen3moe = 0;
  if (qmoe_gguf_get_str(f, "general.architecture", &arch, &arch_len) == 0) {
    char key[160];
    uint64_t bc;
    is_qwen3moe = arch_len == 8 && !memcmp(arch, "qwen3moe", 8);
    snprintf(key, sizeof key, "%.*s.block_count", (int)(arch_len < 100 ? arch_len : 100), arch);
    if (qmoe_gguf_get_u64(f, key, &bc) == 0 && bc < 100000000) n_layers = (int64_t)bc;
  }
  if (n_layers == 0) {
    for (int64_t i = 0; i < nt; i++) {
      const char *rest;
      int64_t l = layer_of(qmoe_gguf_tensor_at(f, i)->name, &rest);
      if (l + 1 > n_layers) n_layers = l + 1;
    }
  }

  /* Plan every tensor first: any problem stops the command before a byte is written. */
  uint64_t total = 0;
  for (int64_t i = 0; i < nt; i++) {
    const qmoe_gguf_tensor *t = qmoe_gguf_tensor_at(f, i);
    plan *p = &plans[i];
    p->t = t;
    if (single) p->dst = t->n_dims == 1 || is_router(t->name) ? f32 : single;
    else { /* the recipe's first matching rule (contracts/recipes/<name>.yaml) */
      const char *qn = qmoe_recipe_qtype(recipe, t->name, (int)t->n_dims, n_layers);
      p->dst = qn ? qmoe_qtype_by_name(qn) : NULL;
      if (!p->dst || !p->dst->quantize_row) {
        cli_error("quantize", "%s", qn ? "the recipe names a qtype this build cannot quantize to" : qmoe_last_error());
        goto done;
      }
    }
    if (t->type == p->dst->ggml_type) continue; /* copied as it is */
    p->src = qmoe_qtype_by_id(t->type);
    if (!p->src || !p->src->dequant_row) {
      cli_error("quantize", "%s: tensor '%s' is %s, which qmoe cannot decode (no contract for it in contracts/quant)", in,
                t->name, t->type_name);
      goto done;
    }
    if (t->ne[0] % p->dst->block_elements) {
      const char *dn = p->dst->name;
      qmoe_gguf_type_size(p->dst->ggml_type, &dn, NULL, NULL); /* its GGUF spelling, "Q4_K" */
      cli_error("quantize", "%s: tensor '%s' has rows of %lld elements, not a multiple of the %s block size %d: %s cannot hold it",
                in, t->name, (long long)t->ne[0], dn, p->dst->block_elements, dn);
      goto done;
    }
    total += t->nbytes;
  }
  if (recipe && !is_qwen3moe)
    fprintf(stderr, "qmoe quantize: note: architecture '%.*s' is not qwen3moe: the %s recipe was applied by tensor "
                    "name (contracts/recipes/%s.yaml, with %lld layers)\n", (int)(arch ? (arch_len < 60 ? arch_len : 60) : 7),
            arch ? arch : "unknown", qmoe_recipe_name(recipe), qmoe_recipe_name(recipe), (long long)n_layers);

  w = qmoe_gguf_writer_new();
  qmoe_gguf_writer_add_input(w, in);
  qmoe_gguf_writer_set_verbatim_names(w, verbatim);
  for (int64_t i = 0; i < qmoe_gguf_kv_count(f); i++) {
    if (qmoe_gguf_writer_set_value(w, qmoe_gguf_kv_key(f, i), qmoe_gguf_kv_value(f, i)) != 0) {
      cli_writer_error("quantize", in);
      goto done;
    }
  }
  int ftype = recipe ? qmoe_recipe_file_type(recipe) : single->file_type;
  if (ftype >= 0) qmoe_gguf_writer_set_u32(w, "general.file_type", (uint32_t)ftype);
  else qmoe_gguf_writer_remove(w, "general.file_type"); /* llama.cpp has no file type for it */
  qmoe_gguf_writer_set_u32(w, "general.quantization_version", 2);
  int64_t max_row = 1;
  uint64_t max_src = 1, max_dst = 1;
  for (int64_t i = 0; i < nt; i++) {
    const qmoe_gguf_tensor *t = plans[i].t;
    if (qmoe_gguf_writer_add_tensor(w, t->name, plans[i].dst->ggml_type, t->n_dims, t->ne, NULL) != 0) {
      cli_writer_error("quantize", in);
      goto done;
    }
    if (t->ne[0] > max_row) max_row = t->ne[0];
    if (t->row_bytes > max_src) max_src = t->row_bytes;
    int64_t db = qmoe_qtype_row_bytes(plans[i].dst, t->ne[0]);
    if ((uint64_t)db > max_dst) max_dst = (uint64_t)db;
  }
  /* A batch of rows is split among the threads, then appended in order. */
  int64_t batch_rows = BATCH_ELEMENTS / max_row > 0 ? BATCH_ELEMENTS / max_row : 1;
  for (int k = 0; k < n_threads; k++) {
    rows[k] = malloc(sizeof(float) * (size_t)max_row);
    decs[k] = malloc(sizeof(float) * (size_t)max_row);
    srcs[k] = malloc((size_t)max_src);
    if (!rows[k] || !decs[k] || !srcs[k]) {
      cli_error("quantize", "out of memory for rows of %lld elements", (long long)max_row);
      goto done;
    }
  }
  batch = malloc((size_t)(max_dst * (uint64_t)batch_rows));
  if (!batch) {
    cli_error("quantize", "out of memory for a batch of %lld rows", (long long)batch_rows);
    goto done;
  }
  if (qmoe_gguf_writer_begin(w, out) != 0) {
    cli_error("quantize", "%s", qmoe_last_error());
    goto done;
  }
  cli_progress prog;
  cli_progress_start(&prog, "quantize", total);
  uint64_t done_bytes = 0;
  for (int64_t i = 0; i < nt; i++) {
    const plan *p = &plans[i];
    const qmoe_gguf_tensor *t = p->t;
    char label[160];
    const char *dn = p->dst->name;
    qmoe_gguf_type_size(p->dst->ggml_type, &dn, NULL, NULL);
    snprintf(label, sizeof label, "%lld/%lld %s -> %s", (long long)i + 1, (long long)nt, t->name, dn);
    if (!p->src) {
      if (qmoe_gguf_writer_append(w, t->data, t->nbytes) != 0) {
        cli_error("quantize", "%s", qmoe_last_error());
        goto done;
      }
      continue;
    }
    uint64_t dst_row = (uint64_t)qmoe_qtype_row_bytes(p->dst, t->ne[0]);
    for (int64_t b0 = 0; b0 < t->n_rows; b0 += batch_rows) {
      int64_t b1 = b0 + batch_rows < t->n_rows ? b0 + batch_rows : t->n_rows;
      int64_t nj = n_threads < b1 - b0 ? n_threads : b1 - b0;
      job jobs[MAX_THREADS];
      pthread_t tids[MAX_THREADS];
      int started[MAX_THREADS] = { 0 };
      for (int64_t k = 0; k < nj; k++) {
        int64_t r0 = b0 + (b1 - b0) * k / nj, r1 = b0 + (b1 - b0) * (k + 1) / nj;
        jobs[k] = (job){ p, r0, r1, dst_row, batch + (uint64_t)(r0 - b0) * dst_row, rows[k], decs[k], srcs[k], 0, -1, "" };
        /* The last job runs on this thread; so does any a thread could not be started for. */
        started[k] = k + 1 < nj && pthread_create(&tids[k], NULL, run_job, &jobs[k]) == 0;
      }
      for (int64_t k = 0; k < nj; k++) {
        if (started[k]) pthread_join(tids[k], NULL);
        else run_job(&jobs[k]);
      }
      for (int64_t k = 0; k < nj; k++) {
        if (jobs[k].rc) {
          cli_error("quantize", "%s: tensor '%s' row %lld: %s", in, t->name, (long long)jobs[k].bad_row, jobs[k].err);
          goto done;
        }
      }
      if (qmoe_gguf_writer_append(w, batch, (uint64_t)(b1 - b0) * dst_row) != 0) {
        cli_error("quantize", "%s", qmoe_last_error());
        goto done;
      }
      done_bytes += (uint64_t)(b1 - b0) * t->row_bytes;
      cli_progress_update(&prog, done_bytes, label);
    }
  }
  if (qmoe_gguf_writer_finish(w) != 0) {
    cli_error("quantize", "%s", qmoe_last_error());
    goto done;
  }
  cli_progress_end(&prog);
  rc = 0;
done:
  qmoe_gguf_writer_free(w); /* removes the temp file if the output was not completed */
  qmoe_gguf_close(f);
  free(plans);
  for (int k = 0; k < MAX_THREADS; k++) free(rows[k]), free(decs[k]), free(srcs[k]);
  free(batch);
  return rc;
}

const qmoe_command cmd_quantize = { "quantize", "re-encode a model's tensors as one qtype or by the q4_k_m recipe",
                                    usage, run };
