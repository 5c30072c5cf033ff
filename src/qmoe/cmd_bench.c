/* cmd_bench.c: `qmoe bench`: prefill and decode tokens/s of a qwen3moe model on a backend (median of repeats
 * after a warm-up), the weight bytes a decoded token reads, and the fraction of a copy bandwidth measured on
 * the same backend with the `add` stage. */
#include <stdlib.h>
#include <string.h>
#include "backend.h"
#include "cmd.h"
#include "bench_timers.h"

static const char usage[] =
  "usage: qmoe bench -m FILE --backend B [-p 512] [-n 128] [--acc f32|f64|q8] [--repeats R] [--ctx N]\n"
  "                  [--copy-mib M] [--json]\n"
  "Times a prefill of -p tokens and a greedy decode of -n tokens, R times after one warm-up, and reports the\n"
  "median tokens/s of each. Timing: device timers where the backend has them (Vulkan timestamps, CUDA\n"
  "events), else the host's monotonic clock around synchronized work; either way the span includes each\n"
  "token's host synchronization (its argmax download). The output names the timer. Also reports the\n"
  "weight bytes one decoded token reads, and the copy bandwidth of the backend measured the same way with\n"
  "the `add` stage: y = a + b over M MiB f32 vectors (--copy-mib, default 256), 8 calls between two\n"
  "synchronizations, (2 reads + 1 write) · 8 / time, median of 5 after a warm-up; then decode weight\n"
  "bytes/s as a fraction of it. The prompt is -p pseudo-random token ids (fixed seed).\n"
  "--stages: then times each stage of a decode position alone, at the model's shapes and qtypes: the calls\n"
  "of one kind (\"matvec attn_q\", \"moe_down ffn_down_exps\", ...) from every layer in turn between two\n"
  "timer reads — each reads its own layer's weights, so over the layers far more than a GPU's L2 —, median\n"
  "of max(R, 5) after a warm-up, divided by the calls; reported with the weight bytes each reads, GB/s,\n"
  "the fraction of the copy bandwidth, and µs per token; their sum against the measured decode step shows\n"
  "what launches and gaps cost.\n"
  "--depth D: the prompt starts at position D, after D cache rows set to zero instead of computed, so the\n"
  "decode is timed at context D + p without a D-token prefill (attention's cost does not depend on what the\n"
  "rows hold); the output says so.\n"
  "The prompt is read in chunks of tokens per stage call (CUDA 512, CPU 64, Vulkan 1; QMOE_PREFILL_CHUNK=N\n"
  "sets it, 1 gives one position at a time); the output names the chunk.\n"
  "example: qmoe bench -m build/models/tiny.gguf --backend vulkan -p 64 -n 32 --repeats 3\n"
  "example: qmoe bench -m model.gguf --backend cuda -p 16 -n 64 --depth 32768 --ctx 32896\n"
  "example: qmoe bench -m model.gguf --backend cuda -p 512 -n 128 --stages --json\n";

enum { O_M, O_BACKEND, O_P, O_N, O_ACC, O_REP, O_CTX, O_COPY, O_JSON, O_STAGES, O_DEPTH, O_N_ };

/* A timer over work enqueued on the backend: Vulkan timestamps, CUDA events, or the host clock after a
 * synchronization. Vulkan's stop timestamp needs recorded work after the last synchronization, so a
 * one-element add marks the end. */
typedef struct {
  qmoe_backend *be;
  int vk;                 /* Vulkan timestamps */
  bench_cuda_timer *cu;   /* CUDA events */
  qmoe_buffer *mark;
  double t0;
  const char *what;
} btimer;

/* Vulkan's end timestamp goes into the work recorded since the last synchronization: a one-element add. */
static int mark_end(btimer *t) {
  qmoe_stage_call c;
  qmoe_call_add(&c, 1, t->mark, t->mark, t->mark);
  return t->be->run(t->be, &c);
}

static void timer_open(btimer *t, qmoe_backend *be) {
  memset(t, 0, sizeof *t);
  t->be = be;
  t->what = "host monotonic clock around synchronized work";
  if (bench_vk_is(be)) {
    double s;
    if (be->alloc(be, 16, &t->mark) == 0 && be->upload(be, t->mark, 0, (float[4]){0}, 16) == 0 &&
        bench_vk_start(be) == 0 && mark_end(t) == 0 && bench_vk_stop(be, &s) == 0) {
      t->vk = 1;
      t->what = "Vulkan timestamps";
    }
    be->sync(be);
  } else if ((t->cu = bench_cuda_new(be))) {
    t->what = "CUDA events";
  }
}

static void timer_close(btimer *t) {
  if (t->mark) t->be->free_buf(t->be, t->mark);
  bench_cuda_free(t->cu);
}

static int timer_start(btimer *t) {
  t->t0 = cli_now();
  if (t->vk) return bench_vk_start(t->be);
  if (t->cu) return bench_cuda_start(t->cu);
  return 0;
}

static int timer_stop(btimer *t, double *secs) {
  int rc;
  if (t->vk) return (rc = mark_end(t)) ? rc : bench_vk_stop(t->be, secs);
  if (t->cu) return bench_cuda_stop(t->cu, secs);
  if ((rc = t->be->sync(t->be))) return rc;
  *secs = cli_now() - t->t0;
  return 0;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static double median(double *v, int n) {
  qsort(v, (size_t)n, sizeof *v, cmp_double);
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* One prefill of P tokens at positions D.. and N decoded tokens; seconds of each. */
static int once(btimer *t, qmoe_model *m, const int32_t *prompt, int64_t D, int64_t P, int64_t N, double *tp,
                double *td) {
  int32_t next = 0;
  if (timer_start(t) || qmoe_model_prefill(m, prompt, P, D, &next, NULL) || timer_stop(t, tp)) return -1;
  if (timer_start(t)) return -1;
  for (int64_t i = 0; i < N; i++)
    if (qmoe_model_step(m, next, D + P + i, &next, NULL)) return -1;
  return timer_stop(t, td) ? -1 : 0;
}

/* Copy bandwidth: y = a + b over MIB MiB f32 vectors reads 2 and writes 1 vector; 8 calls per timing. */
static int copy_bandwidth(btimer *tm, qmoe_backend *be, int64_t mib, double *gbs) {
  const size_t n = (size_t)mib << 18, bytes = n * 4;
  enum { CALLS = 8 };
  qmoe_buffer *a = NULL, *b = NULL;
  float *host = calloc(n, 4);
  int rc = host ? 0 : -1;
  if (!rc) for (size_t i = 0; i < n; i++) host[i] = (float)(i % 1000) * 1e-3f;
  if (!rc) rc = be->alloc(be, bytes, &a);
  if (!rc) rc = be->alloc(be, bytes, &b);
  if (!rc) rc = be->upload(be, a, 0, host, bytes);
  if (!rc) rc = be->upload(be, b, 0, host, bytes);
  double t[6];
  for (int r = 0; !rc && r < 6; r++) {
    qmoe_stage_call c;
    qmoe_call_add(&c, (int64_t)n, a, b, a);
    rc = timer_start(tm);
    for (int k = 0; !rc && k < CALLS; k++) rc = be->run(be, &c);
    if (!rc) rc = timer_stop(tm, &t[r]);
  }
  if (!rc) *gbs = 3.0 * CALLS * (double)bytes / median(t + 1, 5) * 1e-9;
  if (a) be->free_buf(be, a);
  if (b) be->free_buf(be, b);
  free(host);
  return rc;
}

/* ---- --stages ------------------------------------------------------------------------------------------ */

typedef struct {
  char label[96];
  uint64_t bytes;          /* weight bytes per call (the first call's; the same in every layer of a recipe
                              that keeps one qtype per kind, else the mean) */
  qmoe_stage_call *calls;  /* this kind's calls of one position, every layer */
  int n, cap;
  double us;               /* median µs per call */
} stage_kind;

typedef struct {
  stage_kind *k;
  int n, cap;
  int rc;
} stage_list;

static int collect(void *user, const char *label, int64_t layer, uint64_t bytes, const void *call) {
  stage_list *l = user;
  (void)layer;
  stage_kind *k = NULL;
  for (int i = 0; i < l->n && !k; i++)
    if (!strcmp(l->k[i].label, label)) k = &l->k[i];
  if (!k) {
    if (l->n == l->cap) {
      int cap = l->cap ? 2 * l->cap : 32;
      stage_kind *nk = realloc(l->k, (size_t)cap * sizeof *nk);
      if (!nk) return QMOE_ENOMEM;
      l->k = nk, l->cap = cap;
    }
    k = &l->k[l->n++];
    memset(k, 0, sizeof *k);
    snprintf(k->label, sizeof k->label, "%s", label);
  }
  if (k->n == k->cap) {
    int cap = k->cap ? 2 * k->cap : 64;
    qmoe_stage_call *nc = realloc(k->calls, (size_t)cap * sizeof *nc);
    if (!nc) return QMOE_ENOMEM;
    k->calls = nc, k->cap = cap;
  }
  k->calls[k->n] = *(const qmoe_stage_call *)call;
  k->bytes = (k->bytes * (uint64_t)k->n + bytes) / (uint64_t)(k->n + 1);
  k->n++;
  return 0;
}

static void stage_list_free(stage_list *l) {
  for (int i = 0; i < l->n; i++) free(l->k[i].calls);
  free(l->k);
}

/* Times every kind of call of a decode position at POS. */
static int time_stages(btimer *tm, qmoe_model *m, int64_t pos, int64_t R, stage_list *l, int verbose) {
  qmoe_backend *be = qmoe_model_backend(m);
  int rc = qmoe_model_calls(m, pos, collect, l);
  if (rc) return rc;
  int reps = R < 5 ? 5 : (int)R;
  double *t = malloc((size_t)(reps + 1) * sizeof *t);
  if (!t) return QMOE_ENOMEM;
  for (int i = 0; !rc && i < l->n; i++) {
    stage_kind *k = &l->k[i];
    for (int r = 0; !rc && r <= reps; r++) { /* r = 0: warm-up */
      rc = timer_start(tm);
      for (int j = 0; !rc && j < k->n; j++) rc = be->run(be, &k->calls[j]);
      if (!rc) rc = timer_stop(tm, &t[r]);
    }
    if (!rc) k->us = median(t + 1, reps) / k->n * 1e6;
    if (!rc && verbose) fprintf(stderr, "qmoe bench: stage %d/%d %s: %.2f µs\n", i + 1, l->n, k->label, k->us);
  }
  free(t);
  return rc;
}

static int run(int argc, char **argv) {
  cli_opt o[O_N_] = {
    [O_M] = { "-m", "--model", 1 }, [O_BACKEND] = { "--backend", NULL, 1 }, [O_P] = { "-p", NULL, 1 },
    [O_N] = { "-n", NULL, 1 }, [O_ACC] = { "--acc", NULL, 1 }, [O_REP] = { "--repeats", NULL, 1 },
    [O_CTX] = { "--ctx", NULL, 1 }, [O_COPY] = { "--copy-mib", NULL, 1 }, [O_JSON] = { "--json", NULL, 0 },
    [O_STAGES] = { "--stages", NULL, 0 }, [O_DEPTH] = { "--depth", NULL, 1 },
  };
  int rc = cli_parse_opts(&cmd_bench, argc, argv, o, O_N_);
  if (rc) return rc;
  if (!o[O_M].value) return cli_usage_error(&cmd_bench, "missing -m FILE");
  const char *path = o[O_M].value, *backend = o[O_BACKEND].value ? o[O_BACKEND].value : "cpu";
  int64_t P = 512, N = 128, R = 3, n_ctx = 0, copy_mib = 256, depth = 0;
  int acc;
  if (cli_parse_acc("bench", o[O_ACC].value, &acc)) return 1;
  if ((o[O_P].value && cli_parse_count("bench", "-p", o[O_P].value, 1, 1 << 20, &P)) ||
      (o[O_N].value && cli_parse_count("bench", "-n", o[O_N].value, 1, 1 << 20, &N)) ||
      (o[O_REP].value && cli_parse_count("bench", "--repeats", o[O_REP].value, 1, 1000, &R)) ||
      (o[O_CTX].value && cli_parse_count("bench", "--ctx", o[O_CTX].value, 1, 1 << 24, &n_ctx)) ||
      (o[O_COPY].value && cli_parse_count("bench", "--copy-mib", o[O_COPY].value, 1, 4096, &copy_mib)) ||
      (o[O_DEPTH].value && cli_parse_count("bench", "--depth", o[O_DEPTH].value, 0, 1 << 24, &depth)))
    return 1;
  qmoe_backend *be = NULL;
  qmoe_model *m = NULL;
  btimer tm = {0};
  int32_t *prompt = NULL;
  double *tp = NULL, *td = NULL;
  rc = 1;
  if (cli_open_model("bench", path, backend, n_ctx, depth + P + N, acc, o[O_JSON].value != NULL, &be, &m)) goto done;
  if (depth > 0) {
    if (!o[O_JSON].value) fprintf(stderr, "qmoe bench: setting %lld cache rows of every layer to zero (--depth)\n",
                                  (long long)depth);
    if (qmoe_model_zero_cache(m, depth)) goto fail;
  }
  const qmoe_model_config *c = qmoe_model_config_of(m);
  prompt = malloc((size_t)P * sizeof *prompt);
  tp = malloc((size_t)R * sizeof *tp), td = malloc((size_t)R * sizeof *td);
  if (!prompt || !tp || !td) {
    cli_error("bench", "out of memory");
    goto done;
  }
  uint64_t s = 88172645463325252ull;
  for (int64_t i = 0; i < P; i++) {
    s ^= s << 13, s ^= s >> 7, s ^= s << 17;
    prompt[i] = (int32_t)(s % (uint64_t)c->n_vocab);
  }
  double w0, w1;
  timer_open(&tm, be);
  if (once(&tm, m, prompt, depth, P < 8 ? P : 8, 2, &w0, &w1)) goto fail; /* warm-up: pipelines, caches */
  for (int64_t r = 0; r < R; r++) {
    if (once(&tm, m, prompt, depth, P, N, &tp[r], &td[r])) goto fail;
    if (!o[O_JSON].value) fprintf(stderr, "qmoe bench: repeat %lld/%lld: prefill %.3f s, decode %.3f s\n",
                                  (long long)r + 1, (long long)R, tp[r], td[r]);
  }
  double prefill = (double)P / median(tp, (int)R), decode = (double)N / median(td, (int)R), gbs = 0;
  if (copy_bandwidth(&tm, be, copy_mib, &gbs)) goto fail;
  uint64_t bpt = qmoe_model_bytes_per_token(m);
  double frac = decode * (double)bpt * 1e-9 / gbs;
  stage_list sl = {0};
  double stage_us = 0; /* Σ over kinds of calls per token × µs per call */
  if (o[O_STAGES].value) {
    if (time_stages(&tm, m, depth + P + N - 1, R, &sl, !o[O_JSON].value)) {
      stage_list_free(&sl);
      goto fail;
    }
    for (int i = 0; i < sl.n; i++) stage_us += sl.k[i].us * sl.k[i].n;
  }
  qmoe_model_memory mem;
  qmoe_model_memory_of(m, &mem);
  const char *timer = tm.what;
  if (o[O_JSON].value) {
    printf("{\"model\":\"%s\",\"backend\":\"%s\",\"acc\":\"%s\",\"prompt_tokens\":%lld,\"decode_tokens\":%lld,"
           "\"repeats\":%lld,\"prefill_tokens_per_s\":%.6g,\"prefill_chunk\":%lld,\"decode_tokens_per_s\":%.6g,"
           "\"weight_bytes_per_token\":%llu,\"copy_gb_per_s\":%.6g,\"fraction_of_copy_bandwidth\":%.6g,"
           "\"memory\":{\"weights\":%llu,\"kv_cache\":%llu,\"workspace\":%llu},\"timer\":\"%s\","
           "\"copy_measured\":\"add stage y = a + b, %lld MiB f32 vectors, 8 calls per sync, (2 reads + 1 write) / time, "
           "median of 5\"",
           path, backend, qmoe_acc_name(acc), (long long)P, (long long)N, (long long)R, prefill,
           (long long)qmoe_model_prefill_chunk(m), decode, (unsigned long long)bpt, gbs, frac, (unsigned long long)mem.weights,
           (unsigned long long)mem.kv_cache, (unsigned long long)mem.workspace, timer, (long long)copy_mib);
    if (o[O_STAGES].value) {
      printf(",\"stage_position\":%lld,\"stage_us_per_token\":%.6g,\"stages\":[", (long long)(depth + P + N - 1), stage_us);
      for (int i = 0; i < sl.n; i++) {
        const stage_kind *k = &sl.k[i];
        double g = (double)k->bytes / (k->us * 1e-6) * 1e-9;
        printf("%s{\"label\":\"%s\",\"calls_per_token\":%d,\"us_per_call\":%.6g,\"weight_bytes_per_call\":%llu,"
               "\"gb_per_s\":%.6g,\"fraction_of_copy_bandwidth\":%.6g}", i ? "," : "", k->label, k->n, k->us,
               (unsigned long long)k->bytes, g, g / gbs);
      }
      printf("]");
    }
    printf(",\"depth\":%lld,\"decode_positions\":[%lld,%lld]}\n", (long long)depth, (long long)(depth + P),
           (long long)(depth + P + N - 1));
  } else {
    printf("model %s on %s (acc %s), median of %lld after a warm-up (%s)\n", path, backend,
           qmoe_acc_name(acc), (long long)R, timer);
    printf("  prefill  %lld tokens: %.2f tokens/s (%lld tokens per stage call)\n", (long long)P, prefill,
           (long long)qmoe_model_prefill_chunk(m));
    printf("  decode   %lld tokens: %.2f tokens/s (positions %lld..%lld)\n", (long long)N, decode, (long long)(depth + P),
           (long long)(depth + P + N - 1));
    if (depth > 0)
      printf("  --depth %lld: the prompt started at position %lld; rows 0..%lld of the cache were set to zero, "
             "not computed\n", (long long)depth, (long long)depth, (long long)depth - 1);
    printf("  weights read per decoded token: %.3f MiB\n", (double)bpt / (1 << 20));
    printf("  copy bandwidth (add stage y = a + b, %lld MiB f32 vectors, 2 reads + 1 write, 8 calls per sync): "
           "%.2f GB/s\n", (long long)copy_mib, gbs);
    printf("  decode weight traffic: %.2f GB/s = %.1f%% of the copy bandwidth\n", decode * (double)bpt * 1e-9,
           100 * frac);
    if (o[O_STAGES].value) {
      printf("  stages of one decode position (position %lld), each kind timed alone over every layer:\n",
             (long long)(depth + P + N - 1));
      printf("    %-34s %6s %10s %12s %9s %7s %11s\n", "stage", "calls", "µs/call", "weights/call", "GB/s", "copy%",
             "µs/token");
      for (int i = 0; i < sl.n; i++) {
        const stage_kind *k = &sl.k[i];
        double g = (double)k->bytes / (k->us * 1e-6) * 1e-9;
        printf("    %-34s %6d %10.2f %9.3f MB %9.1f %6.1f%% %11.1f\n", k->label, k->n, k->us, (double)k->bytes * 1e-6,
               g, 100 * g / gbs, k->us * k->n);
      }
      printf("    sum of stages: %.1f µs per token (%.1f tokens/s); measured decode step: %.1f µs\n", stage_us,
             1e6 / stage_us, 1e6 / decode);
    }
  }
  stage_list_free(&sl);
  rc = 0;
  goto done;
fail:
  cli_error("bench", "%s", qmoe_last_error());
done:
  if (tm.be) timer_close(&tm);
  free(prompt);
  free(tp);
  free(td);
  cli_close_model(be, m);
  return rc;
}

const qmoe_command cmd_bench = { "bench", "measures prefill/decode tokens/s and the fraction of copy bandwidth", usage,
                                 run };
