/* cmd_make_model.c: `qmoe make-model`: writes a synthetic qwen3moe GGUF (real tensor names, metadata, the
 * Q4_K_M recipe's per-tensor types, a tokenizer) with seeded random weights scaled for realistic activations. */
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "cmd.h"
#include "diag.h"

static const char usage[] =
  "usage: qmoe make-model --preset tiny|small|qwen3-30b-a3b -o FILE [--ftype q4_k_m|q8_0|f16|f32] [--seed N]\n"
  "                       [--layers N] [--threads N] [--dry-run]\n"
  "Writes a qwen3moe GGUF with llama.cpp's tensor names and metadata keys, a byte-level BPE tokenizer with\n"
  "ChatML specials, and seeded random weights: the same options give the same bytes.\n"
  "presets (hidden, layers, experts/used, expert FF, heads/KV heads x head dim, vocab):\n"
  "  tiny           256,  4,   8/2,  256,  4/2 x 64,    1024   (4.7 MB; CI tests, the default of `qmoe run`)\n"
  "  small          1024, 8,  32/4,  512, 16/4 x 64,   32000   (304 MB in q4_k_m; local benchmarks)\n"
  "  qwen3-30b-a3b  2048, 48, 128/8, 768, 32/4 x 128, 151936   (Qwen3-30B-A3B's shape, 17.3 GiB in q4_k_m)\n"
  "  --ftype T    q4_k_m (default: llama.cpp's recipe, contracts/recipes/q4_k_m.yaml, as `qmoe quantize`\n"
  "               applies it), q8_0, f16 or f32;\n"
  "               router and norms are F32 in every type\n"
  "  --seed N     random seed (default 1)\n"
  "  --layers N   override the preset's layer count (the recipe's per-layer types follow N)\n"
  "  --threads N, -j N  generate with N threads (default: the online CPUs); the bytes do not depend on N\n"
  "  --dry-run    print the tensor table (name, type, shape, bytes) and the totals; write nothing (-o optional)\n"
  "Weights: quantized tensors are written as random valid blocks (random quants, scales chosen for the\n"
  "tensor's value scale), so no quantizer runs; scales keep the residual stream's RMS near 1 across layers,\n"
  "give router rows distinct norms (top-k is rarely a near-tie) and logits a spread of a few units.\n"
  "The file appears only when complete (temp file + rename). Progress goes to stderr.\n"
  "example: qmoe make-model --preset tiny -o build/models/tiny.gguf\n";

typedef struct {
  const char *name;
  int64_t hidden, layers, experts, used, expert_ff, ff, heads, kv_heads, head_dim, vocab, context;
  double rope_base;
} preset;

static const preset presets[] = {
  { "tiny", 256, 4, 8, 2, 256, 768, 4, 2, 64, 1024, 4096, 1e6 },
  { "small", 1024, 8, 32, 4, 512, 3072, 16, 4, 64, 32000, 8192, 1e6 },
  { "qwen3-30b-a3b", 2048, 48, 128, 8, 768, 6144, 32, 4, 128, 151936, 40960, 1e6 },
};

enum { KIND_NORM, KIND_EMBD, KIND_Q, KIND_K, KIND_V, KIND_O, KIND_ROUTER, KIND_GATE, KIND_UP, KIND_DOWN, KIND_OUT };

typedef struct {
  char name[64];
  int kind, n_dims, type;
  int64_t layer, ne[3], n_rows;
  uint64_t row_bytes, nbytes;
  double sigma; /* the standard deviation of the values (norms: of w - 1) */
} tensor_plan;

/* ---- seeded randomness: one independent stream per (seed, tensor, row), so threads cannot change the bytes */
static uint64_t splitmix64(uint64_t *s) {
  uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}
typedef struct { uint64_t s[4]; } rng;
static void rng_seed(rng *r, uint64_t seed, uint64_t a, uint64_t b) {
  uint64_t s = seed ^ (a * 0xD1B54A32D192ED03ull) ^ (b * 0xABC98388FB8FAC03ull);
  for (int i = 0; i < 4; i++) r->s[i] = splitmix64(&s);
}
static uint64_t rng_next(rng *r) { /* xoshiro256** */
  uint64_t *s = r->s, x = s[1] * 5, out = ((x << 7) | (x >> 57)) * 9, t = s[1] << 17;
  s[2] ^= s[0], s[3] ^= s[1], s[1] ^= s[2], s[0] ^= s[3], s[2] ^= t, s[3] = (s[3] << 45) | (s[3] >> 19);
  return out;
}
static double rng_unit(rng *r) { return (double)(rng_next(r) >> 11) * (1.0 / 9007199254740992.0); }
/* Approximately N(0, 1): the sum of four uniform 16-bit draws, rescaled (Irwin-Hall, bounded by ±3.46). */
static float rng_normal(rng *r) {
  uint64_t v = rng_next(r);
  double s = (double)(v & 0xFFFF) + (double)((v >> 16) & 0xFFFF) + (double)((v >> 32) & 0xFFFF) + (double)(v >> 48);
  return (float)((s - 2.0 * 65535.0) * (1.7320508075688772 / 65536.0)); /* sd of each draw: 65536/sqrt(12) */
}

static uint16_t to_f16(float x) {
  uint16_t h;
  qmoe_quantize_row(1, &x, &h, 1); /* the f16 codec: round to nearest even */
  return h;
}

/* Random valid blocks of n elements with values of standard deviation sigma and mean 0, written directly:
 * uniform quants, sub-block scales random in a band, the super-scale chosen for sigma. The block layouts
 * are those of contracts/quant/{q8_0,q4_k,q6_k}.yaml (tests decode the result with gguf-py). */
static void gen_q8_0(rng *r, unsigned char *dst, int64_t n, double sigma) {
  const double sd_q = 73.6116839; /* standard deviation of the integers -127..127 */
  for (int64_t b = 0; b < n / 32; b++, dst += 34) {
    uint16_t d = to_f16((float)(sigma / sd_q * (0.8 + 0.4 * rng_unit(r))));
    memcpy(dst, &d, 2);
    for (int i = 0; i < 32; i++) dst[2 + i] = (unsigned char)(int8_t)((int)(rng_next(r) % 255) - 127);
  }
}
static void gen_q4_k(rng *r, unsigned char *dst, int64_t n, double sigma) {
  /* y = d·sc·q - dmin·m with q uniform in 0..15 (mean 7.5, sd 4.61); m = sc and dmin = 7.5·d centre it.
   * sc uniform in 32..63: E[sc^2] = 47.5^2 + (32^2 - 1)/12. */
  const double rms_sc = sqrt(47.5 * 47.5 + (32.0 * 32.0 - 1.0) / 12.0), sd_q = sqrt((16.0 * 16.0 - 1.0) / 12.0);
  for (int64_t b = 0; b < n / 256; b++, dst += 144) {
    float d = (float)(sigma / (sd_q * rms_sc));
    uint16_t hd = to_f16(d), hm = to_f16(7.5f * d);
    memcpy(dst, &hd, 2);
    memcpy(dst + 2, &hm, 2);
    int sc[8];
    for (int j = 0; j < 8; j++) sc[j] = 32 + (int)(rng_next(r) & 31);
    unsigned char *s = dst + 4;
    for (int j = 0; j < 4; j++) {
      s[j] = (unsigned char)(sc[j] | ((sc[j + 4] >> 4) << 6));     /* sc_j, top bits of sc_{j+4} */
      s[j + 4] = (unsigned char)(sc[j] | ((sc[j + 4] >> 4) << 6)); /* m_j = sc_j, top bits of m_{j+4} */
      s[j + 8] = (unsigned char)((sc[j + 4] & 15) | ((sc[j + 4] & 15) << 4));
    }
    for (int i = 0; i < 128; i += 8) {
      uint64_t v = rng_next(r);
      memcpy(dst + 16 + i, &v, 8);
    }
  }
}
static void gen_q6_k(rng *r, unsigned char *dst, int64_t n, double sigma) {
  /* y = d·sc·(q - 32), q uniform in 0..63 (sd 18.47); sc = ±(64..127) so each sub-block's small mean
   * (-0.5·d·sc) cancels on average: E[sc^2] = 95.5^2 + (64^2 - 1)/12. */
  const double rms_sc = sqrt(95.5 * 95.5 + (64.0 * 64.0 - 1.0) / 12.0), sd_q = sqrt((64.0 * 64.0 - 1.0) / 12.0);
  for (int64_t b = 0; b < n / 256; b++, dst += 210) {
    for (int i = 0; i < 192; i += 8) {
      uint64_t v = rng_next(r);
      memcpy(dst + i, &v, 8);
    }
    for (int j = 0; j < 16; j++) {
      uint64_t v = rng_next(r);
      int sc = 64 + (int)(v & 63);
      dst[192 + j] = (unsigned char)(int8_t)((v >> 8) & 1 ? -sc : sc);
    }
    uint16_t hd = to_f16((float)(sigma / (sd_q * rms_sc)));
    memcpy(dst + 208, &hd, 2);
  }
}

/* ---- the model's plan ------------------------------------------------------------------------------ */
static void add_tensor(tensor_plan *t, int64_t *n, const char *name, int64_t layer, int kind, int n_dims, int64_t ne0,
                       int64_t ne1, int64_t ne2, double sigma) {
  tensor_plan *p = &t[(*n)++];
  memset(p, 0, sizeof *p);
  if (layer >= 0) snprintf(p->name, sizeof p->name, "blk.%lld.%s", (long long)layer, name);
  else snprintf(p->name, sizeof p->name, "%s", name);
  p->layer = layer, p->kind = kind, p->n_dims = n_dims, p->sigma = sigma;
  p->ne[0] = ne0, p->ne[1] = ne1, p->ne[2] = ne2;
  p->n_rows = ne1 * ne2;
}

/* Per-expert router row scale: distinct norms from 0.5x to 1.5x in a seeded order. */
static double router_row_scale(uint64_t seed, int64_t layer, int64_t e, int64_t n_experts) {
  rng r;
  rng_seed(&r, seed, 0x524F55544552ull, (uint64_t)layer);
  /* a seeded permutation of 0..E-1 (Fisher-Yates), then expert e's rank */
  int64_t rank = e;
  int64_t *perm = xmalloc(sizeof *perm * (size_t)n_experts);
  for (int64_t i = 0; i < n_experts; i++) perm[i] = i;
  for (int64_t i = n_experts - 1; i > 0; i--) {
    int64_t j = (int64_t)(rng_next(&r) % (uint64_t)(i + 1)), t = perm[i];
    perm[i] = perm[j], perm[j] = t;
  }
  for (int64_t i = 0; i < n_experts; i++)
    if (perm[i] == e) rank = i;
  free(perm);
  return 0.5 + ((double)rank + 0.5) / (double)n_experts;
}

typedef struct {
  const tensor_plan *t;
  int64_t t_index, r0, r1;
  uint64_t seed;
  int64_t n_experts;
  const double *row_scale; /* router: per-row (expert) scale; NULL otherwise */
  unsigned char *out;
  float *row;
} job;

static void *run_job(void *arg) {
  job *j = arg;
  const tensor_plan *t = j->t;
  for (int64_t r = j->r0; r < j->r1; r++) {
    rng g;
    rng_seed(&g, j->seed, (uint64_t)j->t_index + 1, (uint64_t)r);
    unsigned char *dst = j->out + (uint64_t)(r - j->r0) * t->row_bytes;
    double sigma = t->sigma * (j->row_scale ? j->row_scale[r] : 1.0);
    switch (t->type) {
    case 8: gen_q8_0(&g, dst, t->ne[0], sigma); break;
    case 12: gen_q4_k(&g, dst, t->ne[0], sigma); break;
    case 14: gen_q6_k(&g, dst, t->ne[0], sigma); break;
    default: /* F32, F16: normal values, through the codec */
      for (int64_t i = 0; i < t->ne[0]; i++)
        j->row[i] = (float)((t->kind == KIND_NORM ? 1.0 : 0.0) + sigma * rng_normal(&g));
      qmoe_quantize_row(t->type, j->row, dst, t->ne[0]);
    }
  }
  return NULL;
}

enum { MAX_THREADS = 64, BATCH_BYTES = 32 << 20 };

static int set_meta(qmoe_gguf_writer *w, const preset *p, int64_t layers, int ftype, uint64_t seed, const char *ftype_name) {
  char name[128];
  int rc = 0;
  snprintf(name, sizeof name, "qmoe synthetic %s %s seed %llu", p->name, ftype_name, (unsigned long long)seed);
  rc |= qmoe_gguf_writer_set_str(w, "general.architecture", "qwen3moe", 8);
  rc |= qmoe_gguf_writer_set_str(w, "general.type", "model", 5);
  rc |= qmoe_gguf_writer_set_str(w, "general.name", name, strlen(name));
  rc |= qmoe_gguf_writer_set_u32(w, "qwen3moe.block_count", (uint32_t)layers);
  rc |= qmoe_gguf_writer_set_u32(w, "qwen3moe.context_length", (uint32_t)p->context);
  rc |= qmoe_gguf_writer_set_u32(w, "qwen3moe.embedding_length", (uint32_t)p->hidden);
  rc |= qmoe_gguf_writer_set_u32(w, "qwen3moe.feed_forward_length", (uint32_t)p->ff);
  rc |= qmoe_gguf_writer_set_u32(w, "qwen3moe.attention.head_count", (uint32_t)p->heads);
  rc |= qmoe_gguf_writer_set_u32(w, "qwen3moe.attention.head_count_kv", (uint32_t)p->kv_heads);
  rc |= qmoe_gguf_writer_set_f32(w, "qwen3moe.rope.freq_base", (float)p->rope_base);
  rc |= qmoe_gguf_writer_set_f32(w, "qwen3moe.attention.layer_norm_rms_epsilon", 1e-6f);
  rc |= qmoe_gguf_writer_set_u32(w, "qwen3moe.expert_used_count", (uint32_t)p->used);
  rc |= qmoe_gguf_writer_set_u32(w, "qwen3moe.attention.key_length", (uint32_t)p->head_dim);
  rc |= qmoe_gguf_writer_set_u32(w, "qwen3moe.attention.value_length", (uint32_t)p->head_dim);
  if (ftype >= 0) rc |= qmoe_gguf_writer_set_u32(w, "general.file_type", (uint32_t)ftype);
  rc |= qmoe_gguf_writer_set_u32(w, "qwen3moe.expert_count", (uint32_t)p->experts);
  rc |= qmoe_gguf_writer_set_u32(w, "qwen3moe.expert_feed_forward_length", (uint32_t)p->expert_ff);
  if (ftype != 0 && ftype != 1) rc |= qmoe_gguf_writer_set_u32(w, "general.quantization_version", 2); /* quantized */
  return rc ? -1 : 0;
}

static int run(int argc, char **argv) {
  const char *preset_name = NULL, *out = NULL, *ftype_name = NULL;
  int64_t seed = -1, layers = -1, n_threads = -1;
  int dry_run = 0;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (!strcmp(a, "--dry-run")) {
      if (dry_run++) return cli_usage_error(&cmd_make_model, "--dry-run given twice");
      continue;
    }
    const char **sopt = !strcmp(a, "--preset") ? &preset_name : !strcmp(a, "-o") || !strcmp(a, "--output") ? &out
                      : !strcmp(a, "--ftype") ? &ftype_name : NULL;
    int64_t *iopt = !strcmp(a, "--seed") ? &seed : !strcmp(a, "--layers") ? &layers
                  : !strcmp(a, "--threads") || !strcmp(a, "-j") ? &n_threads : NULL;
    if (!sopt && !iopt) {
      if (a[0] == '-' && a[1]) return cli_usage_error(&cmd_make_model, "unknown option '%s'", a);
      return cli_usage_error(&cmd_make_model, "unexpected argument '%s'", a);
    }
    if (i + 1 >= argc) return cli_usage_error(&cmd_make_model, "%s needs a value", a);
    if (sopt) {
      if (*sopt) return cli_usage_error(&cmd_make_model, "%s given twice", a);
      *sopt = argv[++i];
    } else {
      if (*iopt >= 0) return cli_usage_error(&cmd_make_model, "%s given twice", a);
      if (cli_parse_i64(argv[i + 1], iopt)) return cli_usage_error(&cmd_make_model, "%s needs a non-negative integer, not '%s'", a, argv[i + 1]);
      i++;
    }
  }
  if (!preset_name) return cli_usage_error(&cmd_make_model, "missing --preset tiny|small|qwen3-30b-a3b");
  if (!out && !dry_run) return cli_usage_error(&cmd_make_model, "missing -o FILE");
  const preset *p = NULL;
  for (size_t i = 0; i < sizeof presets / sizeof presets[0]; i++)
    if (!strcmp(presets[i].name, preset_name)) p = &presets[i];
  if (!p) return cli_usage_error(&cmd_make_model, "unknown preset '%s'; choose tiny, small or qwen3-30b-a3b", preset_name);
  if (layers == 0 || layers > 1000) return cli_usage_error(&cmd_make_model, "--layers must be from 1 to 1000");
  if (layers < 0) layers = p->layers;
  if (seed < 0) seed = 1;
  if (n_threads == 0 || n_threads > MAX_THREADS) return cli_usage_error(&cmd_make_model, "--threads must be from 1 to %d", MAX_THREADS);
  if (n_threads < 0) {
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    n_threads = ncpu < 1 ? 1 : ncpu > MAX_THREADS ? MAX_THREADS : ncpu;
  }
  /* --ftype: the recipe (contracts/recipes/q4_k_m.yaml, as `qmoe quantize` applies it) or one qtype for every
   * matrix; general.file_type comes from the recipe's or the quant contract's file_type. */
  if (!ftype_name) ftype_name = "q4_k_m";
  const qmoe_recipe *recipe = NULL;
  const qmoe_qtype_info *mat = NULL;
  if (!strcmp(ftype_name, "q4_k_m")) recipe = qmoe_recipe_by_name("q4_k_m");
  else if (!strcmp(ftype_name, "q8_0") || !strcmp(ftype_name, "f16") || !strcmp(ftype_name, "f32")) mat = qmoe_qtype_by_name(ftype_name);
  else return cli_usage_error(&cmd_make_model, "unknown --ftype '%s'; choose q4_k_m, q8_0, f16 or f32", ftype_name);
  if (!recipe && !mat) return cli_error("make-model", "this build has no contract for '%s'", ftype_name);
  int ftype = recipe ? qmoe_recipe_file_type(recipe) : mat->file_type;
  int mat_type = mat ? mat->ggml_type : -1;

  /* The tensors, in llama.cpp's order, with the value scale each gets (see usage: realistic activations). */
  const int64_t H = p->hidden, E = p->experts, F = p->expert_ff, QD = p->heads * p->head_dim, KD = p->kv_heads * p->head_dim;
  int64_t cap = 3 + 12 * layers, nt = 0;
  tensor_plan *ts = xmalloc(sizeof *ts * (size_t)cap);
  const double rs_h = 1.0 / sqrt((double)H);
  add_tensor(ts, &nt, "token_embd.weight", -1, KIND_EMBD, 2, H, p->vocab, 1, 1.0);
  for (int64_t l = 0; l < layers; l++) {
    add_tensor(ts, &nt, "attn_norm.weight", l, KIND_NORM, 1, H, 1, 1, 0.1);
    add_tensor(ts, &nt, "attn_q.weight", l, KIND_Q, 2, H, QD, 1, rs_h);
    add_tensor(ts, &nt, "attn_k.weight", l, KIND_K, 2, H, KD, 1, rs_h);
    add_tensor(ts, &nt, "attn_v.weight", l, KIND_V, 2, H, KD, 1, rs_h);
    /* attention output adds about 0.1 RMS to a residual stream of RMS about 1 */
    add_tensor(ts, &nt, "attn_output.weight", l, KIND_O, 2, QD, H, 1, 0.1 / sqrt((double)QD));
    add_tensor(ts, &nt, "attn_q_norm.weight", l, KIND_NORM, 1, p->head_dim, 1, 1, 0.1);
    add_tensor(ts, &nt, "attn_k_norm.weight", l, KIND_NORM, 1, p->head_dim, 1, 1, 0.1);
    add_tensor(ts, &nt, "ffn_norm.weight", l, KIND_NORM, 1, H, 1, 1, 0.1);
    /* router logits of standard deviation 2 x (0.5..1.5 per expert) */
    add_tensor(ts, &nt, "ffn_gate_inp.weight", l, KIND_ROUTER, 2, H, E, 1, 2.0 * rs_h);
    add_tensor(ts, &nt, "ffn_gate_exps.weight", l, KIND_GATE, 3, H, F, E, rs_h);
    add_tensor(ts, &nt, "ffn_up_exps.weight", l, KIND_UP, 3, H, F, E, rs_h);
    /* silu(g)·u has RMS about 0.6 for unit g, u: the expert output gets RMS about 0.1 */
    add_tensor(ts, &nt, "ffn_down_exps.weight", l, KIND_DOWN, 3, F, H, E, 0.1 / (0.6 * sqrt((double)F)));
  }
  add_tensor(ts, &nt, "output_norm.weight", -1, KIND_NORM, 1, H, 1, 1, 0.1);
  add_tensor(ts, &nt, "output.weight", -1, KIND_OUT, 2, H, p->vocab, 1, 3.0 * rs_h); /* logits of sd about 3 */

  int rc = 1;
  qmoe_gguf_writer *w = qmoe_gguf_writer_new();
  unsigned char *batch = NULL;
  float *rows[MAX_THREADS] = { 0 };
  double *row_scale = NULL;
  uint64_t total = 0;
  int64_t max_row = 1;
  for (int64_t i = 0; i < nt; i++) {
    tensor_plan *t = &ts[i];
    if (t->n_dims == 1 || t->kind == KIND_ROUTER) t->type = 0; /* norms and the router stay F32 */
    else if (mat_type >= 0) t->type = mat_type;
    else {
      const char *qn = qmoe_recipe_qtype(recipe, t->name, t->n_dims, layers);
      const qmoe_qtype_info *q = qn ? qmoe_qtype_by_name(qn) : NULL;
      if (!q || (q->ggml_type != 0 && q->ggml_type != 12 && q->ggml_type != 14)) {
        cli_error("make-model", "tensor '%s': the %s recipe gives %s; make-model writes f32, q4_k and q6_k in it", t->name,
                  ftype_name, qn ? qn : qmoe_last_error());
        goto done;
      }
      t->type = q->ggml_type;
    }
    const qmoe_qtype_info *qt = qmoe_qtype_by_id(t->type);
    int64_t rb = qt ? qmoe_qtype_row_bytes(qt, t->ne[0]) : -1;
    if (rb < 0) {
      cli_error("make-model", "tensor '%s': rows of %lld elements do not fit type %s (block of %d)", t->name,
                (long long)t->ne[0], qt ? qt->name : "?", qt ? qt->block_elements : 0);
      goto done;
    }
    t->row_bytes = (uint64_t)rb, t->nbytes = (uint64_t)rb * (uint64_t)t->n_rows;
    total += t->nbytes;
    if (t->ne[0] > max_row) max_row = t->ne[0];
    if (qmoe_gguf_writer_add_tensor(w, t->name, t->type, t->n_dims, t->ne, NULL) != 0) {
      cli_error("make-model", "%s", qmoe_last_error());
      goto done;
    }
  }
  if (dry_run) {
    int64_t by_type[64] = { 0 };
    printf("%-28s %-6s %-22s %s\n", "tensor", "type", "shape", "bytes");
    for (int64_t i = 0; i < nt; i++) {
      const tensor_plan *t = &ts[i];
      const char *tn = "?";
      char shape[64];
      qmoe_gguf_type_size(t->type, &tn, NULL, NULL);
      if (t->n_dims == 1) snprintf(shape, sizeof shape, "[%lld]", (long long)t->ne[0]);
      else if (t->n_dims == 2) snprintf(shape, sizeof shape, "[%lld, %lld]", (long long)t->ne[0], (long long)t->ne[1]);
      else snprintf(shape, sizeof shape, "[%lld, %lld, %lld]", (long long)t->ne[0], (long long)t->ne[1], (long long)t->ne[2]);
      printf("%-28s %-6s %-22s %llu\n", t->name, tn, shape, (unsigned long long)t->nbytes);
      if (t->type >= 0 && t->type < 64) by_type[t->type]++;
    }
    printf("total: %lld tensors (", (long long)nt);
    for (int ty = 0, k = 0; ty < 64; ty++) {
      const char *tn = "?";
      if (!by_type[ty]) continue;
      qmoe_gguf_type_size(ty, &tn, NULL, NULL);
      printf("%s%lld %s", k++ ? ", " : "", (long long)by_type[ty], tn);
    }
    printf("), %llu bytes of tensor data (%.2f GiB)\n", (unsigned long long)total, (double)total / (1024.0 * 1024.0 * 1024.0));
    rc = fflush(stdout) != 0;
    goto done;
  }
  if (set_meta(w, p, layers, ftype, (uint64_t)seed, ftype_name) != 0 ||
      qmoe_tokenizer_write_synthetic(w, p->vocab, (uint64_t)seed) != 0) {
    cli_error("make-model", "%s", qmoe_last_error());
    goto done;
  }
  for (int k = 0; k < n_threads; k++) rows[k] = xmalloc(sizeof(float) * (size_t)max_row);
  batch = xmalloc(BATCH_BYTES);
  row_scale = xmalloc(sizeof *row_scale * (size_t)E);
  if (qmoe_gguf_writer_begin(w, out) != 0) {
    cli_error("make-model", "%s", qmoe_last_error());
    goto done;
  }
  cli_progress prog;
  int show = total >= (64u << 20); /* a model built in a blink (tiny, in the build) needs no progress lines */
  cli_progress_start(&prog, "make-model", total);
  uint64_t done_bytes = 0;
  for (int64_t i = 0; i < nt; i++) {
    const tensor_plan *t = &ts[i];
    char label[128];
    const char *tn = "?";
    qmoe_gguf_type_size(t->type, &tn, NULL, NULL);
    snprintf(label, sizeof label, "%lld/%lld %s %s", (long long)i + 1, (long long)nt, t->name, tn);
    if (t->kind == KIND_ROUTER)
      for (int64_t e = 0; e < E; e++) row_scale[e] = router_row_scale((uint64_t)seed, t->layer, e, E);
    int64_t batch_rows = (int64_t)(BATCH_BYTES / t->row_bytes);
    if (batch_rows < 1) batch_rows = 1; /* a row never exceeds a few hundred KiB here */
    for (int64_t b0 = 0; b0 < t->n_rows; b0 += batch_rows) {
      int64_t b1 = b0 + batch_rows < t->n_rows ? b0 + batch_rows : t->n_rows;
      int64_t nj = n_threads < b1 - b0 ? n_threads : b1 - b0;
      job jobs[MAX_THREADS];
      pthread_t tids[MAX_THREADS];
      int started[MAX_THREADS] = { 0 };
      for (int64_t k = 0; k < nj; k++) {
        int64_t r0 = b0 + (b1 - b0) * k / nj, r1 = b0 + (b1 - b0) * (k + 1) / nj;
        jobs[k] = (job){ t, i, r0, r1, (uint64_t)seed, E, t->kind == KIND_ROUTER ? row_scale : NULL,
                         batch + (uint64_t)(r0 - b0) * t->row_bytes, rows[k] };
        started[k] = k + 1 < nj && pthread_create(&tids[k], NULL, run_job, &jobs[k]) == 0;
      }
      for (int64_t k = 0; k < nj; k++) {
        if (started[k]) pthread_join(tids[k], NULL);
        else run_job(&jobs[k]);
      }
      if (qmoe_gguf_writer_append(w, batch, (uint64_t)(b1 - b0) * t->row_bytes) != 0) {
        cli_error("make-model", "%s", qmoe_last_error());
        goto done;
      }
      done_bytes += (uint64_t)(b1 - b0) * t->row_bytes;
      if (show) cli_progress_update(&prog, done_bytes, label);
    }
  }
  if (qmoe_gguf_writer_finish(w) != 0) {
    cli_error("make-model", "%s", qmoe_last_error());
    goto done;
  }
  if (show) cli_progress_end(&prog);
  rc = 0;
done:
  qmoe_gguf_writer_free(w); /* removes the temp file when the output was not completed */
  for (int k = 0; k < MAX_THREADS; k++) free(rows[k]);
  free(batch);
  free(row_scale);
  free(ts);
  return rc;
}

const qmoe_command cmd_make_model = { "make-model", "write a synthetic qwen3moe GGUF (tiny, small, qwen3-30b-a3b shapes)",
                                      usage, run };
