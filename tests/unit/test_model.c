/* test_model.c: the whole Qwen3-MoE forward (runtime/model/model.c) on every GPU backend against the CPU backend,
 * on a tiny random qwen3moe written with qmoe's GGUF writer (Q4_K, Q6_K, Q8_0 and F32 matrices mixed per
 * layer, as a Q4_K_M file mixes them): per-layer cosine of the hidden states, greedy tokens, f64 router
 * top-k and logits, determinism. The NumPy reference comparison is tests/model/check_model.py; this one
 * needs no Python, so tests/gpu.sh runs it on real GPUs. A missing backend skips (QMOE_TEST_REQUIRE_BACKEND=1
 * turns that into a failure). */
#include <stdint.h>
#include <unistd.h>
#include "../harness.h"
#include "backend.h"
#include "qmoe.h"
#include "trace_points.h"

enum { H = 256, NH = 4, NKV = 2, D = 64, E = 8, K = 2, F = 256, V = 300, NL = 3, CTX = 64 };
enum { GGML_F32 = 0, GGML_Q8_0 = 8, GGML_Q4_K = 12, GGML_Q6_K = 14 };
static const int32_t PROMPT[] = { 1, 2, 3, 4, 5, 250 };
#define NP ((int)(sizeof PROMPT / sizeof PROMPT[0]))
enum { NGEN = 8 };

static char model_path[64];

static uint64_t rng_state = 0x5DEECE66Dull;
static double uniform(void) {
  rng_state ^= rng_state << 13, rng_state ^= rng_state >> 7, rng_state ^= rng_state << 17;
  return (double)(rng_state >> 11) * 0x1.0p-53;
}
static double gauss(void) {
  double u = uniform() + 1e-300, v = uniform();
  return sqrt(-2 * log(u)) * cos(6.283185307179586 * v);
}

/* Keeps every tensor's bytes alive until the file is written. */
static void *kept[64];
static int n_kept;

static int add(qmoe_gguf_writer *w, const char *name, int type, int nd, const int64_t *ne, double sd, double lo) {
  int64_t n = 1;
  for (int i = 0; i < nd; i++) n *= ne[i];
  float *x = malloc((size_t)n * sizeof *x);
  if (!x) return -1;
  for (int64_t i = 0; i < n; i++) x[i] = (float)(sd > 0 ? sd * gauss() : lo + 0.4 * uniform());
  void *data = x;
  if (type != GGML_F32) {
    const qmoe_qtype_info *qt = qmoe_qtype_by_id(type);
    int64_t rb = qmoe_qtype_row_bytes(qt, ne[0]), rows = n / ne[0];
    unsigned char *q = malloc((size_t)(rb * rows));
    if (!q) return -1;
    for (int64_t r = 0; r < rows; r++)
      if (qmoe_quantize_row(type, x + r * ne[0], q + r * rb, ne[0])) return -1;
    free(x);
    data = q;
  }
  kept[n_kept++] = data;
  return qmoe_gguf_writer_add_tensor(w, name, type, nd, ne, data);
}

static int write_model(const char *path) {
  qmoe_gguf_writer *w = qmoe_gguf_writer_new();
  const char *arch = "qwen3moe";
  int rc = qmoe_gguf_writer_set_str(w, "general.architecture", arch, 8);
  struct { const char *k; uint32_t v; } u[] = {
    { "qwen3moe.block_count", NL }, { "qwen3moe.context_length", CTX }, { "qwen3moe.embedding_length", H },
    { "qwen3moe.feed_forward_length", 4 * H }, { "qwen3moe.attention.head_count", NH },
    { "qwen3moe.attention.head_count_kv", NKV }, { "qwen3moe.attention.key_length", D },
    { "qwen3moe.attention.value_length", D }, { "qwen3moe.expert_count", E }, { "qwen3moe.expert_used_count", K },
    { "qwen3moe.expert_feed_forward_length", F } };
  for (size_t i = 0; i < sizeof u / sizeof u[0]; i++) rc |= qmoe_gguf_writer_set_u32(w, u[i].k, u[i].v);
  rc |= qmoe_gguf_writer_set_f32(w, "qwen3moe.rope.freq_base", 10000.0f);
  rc |= qmoe_gguf_writer_set_f32(w, "qwen3moe.attention.layer_norm_rms_epsilon", 1e-6f);
  /* Per layer: q, k, v, o, gate/up, down qtypes. */
  static const int ty[NL][6] = { { GGML_Q4_K, GGML_Q8_0, GGML_Q6_K, GGML_Q4_K, GGML_Q4_K, GGML_Q6_K },
                                 { GGML_Q8_0, GGML_Q4_K, GGML_F32, GGML_Q6_K, GGML_Q8_0, GGML_Q4_K },
                                 { GGML_Q6_K, GGML_Q6_K, GGML_Q8_0, GGML_Q8_0, GGML_Q6_K, GGML_Q8_0 } };
  double sh = 1 / sqrt((double)H), sf = 1 / sqrt((double)F);
  rc |= add(w, "token_embd.weight", GGML_Q8_0, 2, (int64_t[]){ H, V }, 1.0, 0);
  for (int l = 0; l < NL; l++) {
    char n[64];
#define T(suffix, type, sd, lo, ...)                                                       \
    (snprintf(n, sizeof n, "blk.%d." suffix ".weight", l),                                \
     add(w, n, type, (int)(sizeof((int64_t[]){ __VA_ARGS__ }) / 8), (int64_t[]){ __VA_ARGS__ }, sd, lo))
    rc |= T("attn_norm", GGML_F32, 0, 0.8, H);
    rc |= T("attn_q", ty[l][0], sh, 0, H, NH * D);
    rc |= T("attn_k", ty[l][1], sh, 0, H, NKV * D);
    rc |= T("attn_v", ty[l][2], sh, 0, H, NKV * D);
    rc |= T("attn_output", ty[l][3], 1 / sqrt((double)(NH * D)), 0, NH * D, H);
    rc |= T("attn_q_norm", GGML_F32, 0, 0.8, D);
    rc |= T("attn_k_norm", GGML_F32, 0, 0.8, D);
    rc |= T("ffn_norm", GGML_F32, 0, 0.8, H);
    rc |= T("ffn_gate_inp", GGML_F32, 4 * sh, 0, H, E);
    rc |= T("ffn_gate_exps", ty[l][4], sh, 0, H, F, E);
    rc |= T("ffn_up_exps", ty[l][4], sh, 0, H, F, E);
    rc |= T("ffn_down_exps", ty[l][5], sf, 0, F, H, E);
#undef T
  }
  rc |= add(w, "output_norm.weight", GGML_F32, 1, (int64_t[]){ H }, 0, 0.8);
  rc |= add(w, "output.weight", GGML_Q6_K, 2, (int64_t[]){ H, V }, sh, 0);
  if (!rc) rc = qmoe_gguf_writer_write(w, path);
  qmoe_gguf_writer_free(w);
  for (int i = 0; i < n_kept; i++) free(kept[i]);
  n_kept = 0;
  return rc;
}

/* One run: l_out of every layer and position, the router's ids, the last position's logits, greedy tokens. */
typedef struct {
  float l_out[NL][NP][H];
  int32_t topk[NL][NP][K];
  float logits[V];
  int32_t gen[NGEN];
} run_result;

static int on_trace(void *user, int point, int64_t layer, int64_t pos, const void *data, int64_t n) {
  run_result *r = user;
  if (point == QMOE_TP_L_OUT && n == H) memcpy(r->l_out[layer][pos], data, sizeof r->l_out[0][0]);
  else if (point == QMOE_TP_FFN_MOE_TOPK && n == K) memcpy(r->topk[layer][pos], data, sizeof r->topk[0][0]);
  else return QMOE_EINVAL;
  return 0;
}

/* Loads the model on BACKEND and runs the prompt (traced) and NGEN greedy tokens. 1: ran; 0: no such
 * backend (why in *skip); -1: failed (error recorded). */
static int run_on(const char *backend, int acc, run_result *r, char *skip, size_t cap) {
  qmoe_backend *be;
  int rc = qmoe_backend_open(backend, &be);
  if (rc == QMOE_ENODEV || (rc && strcmp(backend, "cpu"))) {
    snprintf(skip, cap, "no %s device: %s", backend, qmoe_last_error());
    return 0;
  }
  if (rc) return t_fail(__FILE__, __LINE__, "open %s: %s", backend, qmoe_last_error()), -1;
  qmoe_model *m;
  if (qmoe_model_load(model_path, be, CTX, &m)) {
    t_fail(__FILE__, __LINE__, "load on %s: %s", backend, qmoe_last_error());
    be->close(be);
    return -1;
  }
  unsigned char points[QMOE_TP_COUNT] = {0}, layers[NL] = { 1, 1, 1 };
  points[QMOE_TP_L_OUT] = points[QMOE_TP_FFN_MOE_TOPK] = 1;
  memset(r, 0, sizeof *r);
  int32_t next = -1;
  rc = qmoe_model_set_acc(m, acc);
  if (!rc) rc = qmoe_model_set_trace(m, points, layers, on_trace, r);
  if (!rc) rc = qmoe_model_prefill(m, PROMPT, NP, 0, &next, r->logits);
  if (!rc) rc = qmoe_model_set_trace(m, NULL, NULL, NULL, NULL);
  for (int i = 0; !rc && i < NGEN; i++) {
    r->gen[i] = next;
    if (i + 1 < NGEN) rc = qmoe_model_step(m, next, NP + i, &next, NULL);
  }
  if (rc) t_fail(__FILE__, __LINE__, "forward on %s: %s", backend, qmoe_last_error());
  qmoe_model_free(m);
  be->close(be);
  return rc ? -1 : 1;
}

static double cosine(const float *a, const float *b, int n) {
  double ab = 0, aa = 0, bb = 0;
  for (int i = 0; i < n; i++) ab += (double)a[i] * b[i], aa += (double)a[i] * a[i], bb += (double)b[i] * b[i];
  return ab / sqrt(aa * bb);
}

static run_result cpu32, cpu64, cpu8, other;
static const char *gpu;
static char skip_why[512];

static int require_backend(void) {
  const char *e = getenv("QMOE_TEST_REQUIRE_BACKEND");
  return e && *e;
}

static void cpu_is_deterministic(void) {
  run_result *again = malloc(sizeof *again);
  REQUIRE(again, "out of memory");
  REQUIRE(run_on("cpu", QMOE_ACC_F32, again, skip_why, sizeof skip_why) == 1, "cpu run");
  CHECK(!memcmp(again, &cpu32, sizeof cpu32), "two cpu runs differ");
  int finite = 1;
  for (int i = 0; i < V; i++) finite &= isfinite(cpu32.logits[i]);
  CHECK(finite, "non-finite logits");
  free(again);
}

/* f32 or q8 (gpu_acc) on the GPU against the CPU's run of the same accumulator. */
static int gpu_acc;
static void gpu_f32_matches_cpu(void) {
  const run_result *cpu = gpu_acc == QMOE_ACC_Q8 ? &cpu8 : &cpu32;
  int ran = run_on(gpu, gpu_acc, &other, skip_why, sizeof skip_why);
  if (ran == 0) {
    if (require_backend()) REQUIRE(0, "%s (QMOE_TEST_REQUIRE_BACKEND is set)", skip_why);
    SKIP("%s", skip_why);
  }
  REQUIRE(ran == 1, "run failed");
  double worst = 1;
  int wl = -1, wp = -1;
  for (int l = 0; l < NL; l++)
    for (int p = 0; p < NP; p++) {
      double c = cosine(other.l_out[l][p], cpu->l_out[l][p], H);
      if (!(c >= worst)) worst = c, wl = l, wp = p;
    }
  CHECK(worst >= 0.9999, "layer %d position %d: l_out cosine %.7f vs cpu (FALSIFY-LAYER-COSINE)", wl, wp, worst);
  CHECK(!memcmp(other.gen, cpu->gen, sizeof other.gen), "greedy tokens differ from cpu (FALSIFY-GREEDY-TOKENS): "
        "%d %d %d %d vs %d %d %d %d", other.gen[0], other.gen[1], other.gen[2], other.gen[3], cpu->gen[0],
        cpu->gen[1], cpu->gen[2], cpu->gen[3]);
  run_result *again = malloc(sizeof *again);
  REQUIRE(again && run_on(gpu, gpu_acc, again, skip_why, sizeof skip_why) == 1, "second run");
  CHECK(!memcmp(again, &other, sizeof other), "two %s runs differ (FALSIFY-DETERMINISM)", gpu);
  free(again);
}

/* q8 on the CPU (docs/q8.md: the row stages of integer-quantized weights on 8-bit activations, the rest f32):
 * deterministic, finite, not the f32 forward (the rounding is applied) and close to it (it costs only that
 * rounding: l_out cosine against f32 at least 0.999). */
static void cpu_q8(void) {
  run_result *again = malloc(sizeof *again);
  REQUIRE(again, "out of memory");
  REQUIRE(run_on("cpu", QMOE_ACC_Q8, again, skip_why, sizeof skip_why) == 1, "cpu q8 run");
  CHECK(!memcmp(again, &cpu8, sizeof cpu8), "two cpu q8 runs differ");
  free(again);
  int finite = 1;
  for (int i = 0; i < V; i++) finite &= isfinite(cpu8.logits[i]);
  CHECK(finite, "non-finite q8 logits");
  CHECK(memcmp(cpu8.logits, cpu32.logits, sizeof cpu8.logits), "q8 logits equal the f32 ones bit for bit: no Q8 applied");
  double worst = 1;
  for (int l = 0; l < NL; l++)
    for (int p = 0; p < NP; p++) worst = fmin(worst, cosine(cpu8.l_out[l][p], cpu32.l_out[l][p], H));
  CHECK(worst >= 0.999, "q8 against f32 on the cpu: l_out cosine %.7f < 0.999", worst);
  printf("# model/cpu/q8: l_out cosine against f32 >= %.7f\n", worst);
}

static void gpu_f64_matches_cpu(void) {
  int ran = run_on(gpu, QMOE_ACC_F64, &other, skip_why, sizeof skip_why);
  if (ran == 0) {
    if (require_backend()) REQUIRE(0, "%s (QMOE_TEST_REQUIRE_BACKEND is set)", skip_why);
    SKIP("%s", skip_why);
  }
  REQUIRE(ran == 1, "run failed");
  CHECK(!memcmp(other.topk, cpu64.topk, sizeof other.topk), "router top-k differs from cpu f64 "
        "(FALSIFY-ROUTER-TOPK-AGREE)");
  double mx = 0, err = 0;
  for (int i = 0; i < V; i++) {
    mx = fmax(mx, fabs(cpu64.logits[i]));
    err = fmax(err, fabs((double)other.logits[i] - cpu64.logits[i]));
  }
  CHECK(err <= 1e-6 * mx, "logits max-abs %.3g x max|logit| vs cpu f64", err / mx);
  CHECK(!memcmp(other.gen, cpu64.gen, sizeof other.gen), "greedy tokens differ from cpu f64");
}

/* FALSIFY-TOKENS over the whole forward: a 37-token prompt read in chunks of 16 (16 + 16 + 5 tokens per stage
 * call), of 4 and one position at a time gives the same logits and argmax, bit for bit, f32, f64 and q8. */
static const char *chunk_backend;
static void prefill_chunks_agree(void) {
  qmoe_backend *be;
  int rc = qmoe_backend_open(chunk_backend, &be);
  if (rc) {
    if (require_backend() || !strcmp(chunk_backend, "cpu"))
      REQUIRE(0, "open %s: %s", chunk_backend, qmoe_last_error());
    SKIP("no %s device: %s", chunk_backend, qmoe_last_error());
  }
  setenv("QMOE_PREFILL_CHUNK", "16", 1);
  qmoe_model *m;
  rc = qmoe_model_load(model_path, be, CTX, &m);
  unsetenv("QMOE_PREFILL_CHUNK");
  if (rc) {
    be->close(be);
    REQUIRE(0, "load on %s: %s", chunk_backend, qmoe_last_error());
  }
  enum { N = 37 };
  int32_t prompt[N];
  for (int i = 0; i < N; i++) prompt[i] = (int32_t)((i * 97 + 13) % V);
  static float logits[3][V];
  static const int64_t chunks[3] = { 16, 4, 1 };
  for (int acc = 0; acc < QMOE_ACC_COUNT; acc++) {
    int32_t next[3] = { -1, -1, -1 };
    for (int c = 0; c < 3; c++) {
      rc = qmoe_model_set_acc(m, acc);
      if (!rc) rc = qmoe_model_set_prefill_chunk(m, chunks[c]);
      if (!rc) rc = qmoe_model_prefill(m, prompt, N, 0, &next[c], logits[c]);
      CHECK(rc == 0, "%s prefill with chunk %lld: %s", chunk_backend, (long long)chunks[c], qmoe_last_error());
      if (rc) break;
      int finite = 1;
      for (int i = 0; i < V; i++) finite &= isfinite(logits[c][i]);
      CHECK(finite, "non-finite logits with chunk %lld", (long long)chunks[c]);
    }
    for (int c = 1; !rc && c < 3; c++) {
      CHECK(!memcmp(logits[c], logits[0], sizeof logits[0]) && next[c] == next[0],
            "%s %s: logits with chunk %lld differ from chunk 16 (FALSIFY-TOKENS)", chunk_backend, qmoe_acc_name(acc),
            (long long)chunks[c]);
    }
  }
  CHECK(qmoe_model_set_prefill_chunk(m, 17) == QMOE_EINVAL, "a chunk above the buffers' 16 tokens is refused");
  qmoe_model_free(m);
  be->close(be);
}

int main(void) {
  snprintf(model_path, sizeof model_path, "/tmp/qmoe-test-model-XXXXXX");
  int fd = mkstemp(model_path);
  if (fd < 0 || close(fd) || write_model(model_path)) {
    printf("not ok model/write: %s\n", qmoe_last_error());
    return 1;
  }
  if (run_on("cpu", QMOE_ACC_F32, &cpu32, skip_why, sizeof skip_why) != 1 ||
      run_on("cpu", QMOE_ACC_F64, &cpu64, skip_why, sizeof skip_why) != 1 ||
      run_on("cpu", QMOE_ACC_Q8, &cpu8, skip_why, sizeof skip_why) != 1) {
    printf("not ok model/cpu: %s\n", t_case_why);
    unlink(model_path);
    return 1;
  }
  RUN_NAMED("model/cpu/determinism", cpu_is_deterministic);
  RUN_NAMED("model/cpu/q8", cpu_q8);
  static const char *chunk_backends[] = { "cpu", "vulkan", "cuda" };
  for (int i = 0; i < 3; i++) {
    char name[64];
    chunk_backend = chunk_backends[i];
    snprintf(name, sizeof name, "model/%s/prefill_chunks", chunk_backend);
    RUN_NAMED(name, prefill_chunks_agree);
  }
  static const char *gpus[] = { "vulkan", "cuda" };
  for (int i = 0; i < 2; i++) {
    char name[64];
    gpu = gpus[i];
    gpu_acc = QMOE_ACC_F32;
    snprintf(name, sizeof name, "model/%s/f32_vs_cpu", gpu);
    RUN_NAMED(name, gpu_f32_matches_cpu);
    gpu_acc = QMOE_ACC_Q8;
    snprintf(name, sizeof name, "model/%s/q8_vs_cpu", gpu);
    RUN_NAMED(name, gpu_f32_matches_cpu);
    snprintf(name, sizeof name, "model/%s/f64_vs_cpu", gpu);
    RUN_NAMED(name, gpu_f64_matches_cpu);
  }
  unlink(model_path);
  return T_DONE();
}
