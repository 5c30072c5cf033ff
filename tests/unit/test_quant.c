/* test_quant.c: dot products (f32 and f64 accumulators) against a long-double reference, row-size errors,
 * and round-trip error of the reference quantizers on Gaussian rows, for every qtype in the table.
 * Also a driver for the script tests in tests/quant/ (which compare with the Lua interpreter and gguf-py):
 *   test_quant --dequant QTYPE < blocks > f32 values      test_quant --quantize QTYPE < f32 values > blocks */
#include <stdint.h>
#include "../harness.h"
#include "qmoe.h"
#include "qtypes.h"

/* ---- driver mode ---------------------------------------------------------------------------------- */

static unsigned char *read_all(FILE *f, size_t *len) {
  size_t cap = 1 << 16, n = 0;
  unsigned char *buf = malloc(cap);
  for (size_t r; buf && (r = fread(buf + n, 1, cap - n, f)) > 0;) {
    n += r;
    if (n == cap) buf = realloc(buf, cap *= 2);
  }
  if (!buf) { fprintf(stderr, "out of memory\n"); exit(2); }
  *len = n;
  return buf;
}

static int driver(const char *mode, const char *name) {
  const qmoe_qtype_info *qt = qmoe_qtype_by_name(name);
  if (!qt) { fprintf(stderr, "test_quant: %s\n", qmoe_last_error()); return 2; }
  size_t len;
  unsigned char *in = read_all(stdin, &len);
  int rc;
  if (!strcmp(mode, "--dequant")) {
    if (len % (size_t)qt->block_bytes) { fprintf(stderr, "test_quant: %zu bytes is not whole %s blocks\n", len, qt->name); return 2; }
    int64_t n = (int64_t)(len / (size_t)qt->block_bytes) * qt->block_elements;
    float *y = malloc(sizeof(float) * (size_t)(n ? n : 1));
    rc = qt->dequant_row(in, y, n);
    if (rc == 0) fwrite(y, sizeof(float), (size_t)n, stdout);
    free(y);
  } else {
    int64_t n = (int64_t)(len / sizeof(float));
    if (len % sizeof(float) || n % qt->block_elements) { fprintf(stderr, "test_quant: input is not whole %s blocks of f32\n", qt->name); return 2; }
    int64_t nbytes = qmoe_qtype_row_bytes(qt, n);
    float *x = malloc(len ? len : 1);
    memcpy(x, in, len);
    unsigned char *out = malloc((size_t)(nbytes ? nbytes : 1));
    rc = qt->quantize_row(x, out, n);
    if (rc == 0) fwrite(out, 1, (size_t)nbytes, stdout);
    free(x);
    free(out);
  }
  free(in);
  if (rc) { fprintf(stderr, "test_quant: %s\n", qmoe_last_error()); return 1; }
  return 0;
}

/* ---- helpers -------------------------------------------------------------------------------------- */

static uint16_t to_f16_bits(float f) { _Float16 h = (_Float16)f; uint16_t u; memcpy(&u, &h, 2); return u; }

/* Random bytes with every float field set to a finite value: ~N(0,1) for one-element formats, a scale
 * of about 2^-6 (either sign for the first field) otherwise, so decoded values stay moderate. */
static void random_blocks(const qmoe_qtype_info *qt, unsigned char *b, int64_t nblocks) {
  const qmoe_qlayout *lay = qmoe_qlayout_by_id(qt->ggml_type);
  for (int64_t k = 0; k < nblocks; k++) {
    unsigned char *blk = b + k * qt->block_bytes;
    for (int i = 0; i < qt->block_bytes; i++) blk[i] = (unsigned char)t_rand_u64();
    for (int f = 0; lay && f < lay->nfields; f++) {
      const qmoe_qfield *fd = &lay->fields[f];
      float v = qt->block_elements == 1 ? (float)t_rand_normal() : (float)(t_rand_normal() * 0.02);
      unsigned char *p = blk + fd->offset;
      if (fd->type == QMOE_QF_F16) { uint16_t h = to_f16_bits(v); p[0] = (unsigned char)h; p[1] = (unsigned char)(h >> 8); }
      else if (fd->type == QMOE_QF_BF16) { uint32_t u; memcpy(&u, &v, 4); p[0] = (unsigned char)(u >> 16); p[1] = (unsigned char)(u >> 24); }
      else if (fd->type == QMOE_QF_F32) { memcpy(p, &v, 4); }
    }
  }
}

/* ---- dot products --------------------------------------------------------------------------------- */

/* dot_f64: each product (double)w·(double)x is exact and the sum is sequential in double, so it is within
 * n·2^-53·Σ|w·x| of the exact sum: within 1e-12·Σ|w·x| for n <= 4096. dot_f32 is defined as the sequential
 * f32 loop acc = acc + w·x over the decoded weights (product rounded, no FMA) and must equal it bit for
 * bit; its error is then within γ_n·Σ|w·x|, γ_n = n·u/(1 − n·u), u = 2^-24 (Higham, Accuracy and
 * Stability of Numerical Algorithms, §3.1). */
static void test_dot(void) {
  for (size_t t = 0; t < qmoe_qtype_count(); t++) {
    const qmoe_qtype_info *qt = qmoe_qtype_at(t);
    for (int rep = 0; rep < 3; rep++) {
      int64_t n = (int64_t)qt->block_elements * (1 + (int64_t)(t_rand_u64() % (4096 / qt->block_elements)));
      unsigned char *row = malloc((size_t)qmoe_qtype_row_bytes(qt, n));
      float *x = malloc(sizeof(float) * (size_t)n), *w = malloc(sizeof(float) * (size_t)n);
      REQUIRE(row && x && w, "out of memory");
      random_blocks(qt, row, n / qt->block_elements);
      for (int64_t i = 0; i < n; i++) x[i] = (float)t_rand_normal();
      REQUIRE(qt->dequant_row(row, w, n) == 0, "%s dequant_row: %s", qt->name, qmoe_last_error());
      long double ref = 0, mag = 0;
      float seq = 0;
      for (int64_t i = 0; i < n; i++) {
        ref += (long double)w[i] * (long double)x[i];
        mag += fabsl((long double)w[i] * (long double)x[i]);
        seq = seq + w[i] * x[i];
      }
      if (qt->dot_f64) {
        double d = qt->dot_f64(row, x, n);
        CHECK(fabsl((long double)d - ref) <= 1e-12L * mag, "%s dot_f64 n=%lld: %.17g vs long double %.17Lg (|err| %.3Lg > 1e-12·Σ|p| = %.3Lg)",
              qt->name, (long long)n, d, ref, fabsl((long double)d - ref), 1e-12L * mag);
      }
      if (qt->dot_f32) {
        float f = qt->dot_f32(row, x, n);
        long double u = 1.0L / 16777216.0L, gamma = n * u / (1 - n * u);
        CHECK(memcmp(&f, &seq, sizeof f) == 0, "%s dot_f32 n=%lld: %.9g, the sequential f32 loop gives %.9g", qt->name, (long long)n,
              (double)f, (double)seq);
        CHECK(fabsl((long double)f - ref) <= gamma * mag, "%s dot_f32 n=%lld: %.9g vs %.17Lg exceeds γ_n·Σ|p| = %.3Lg", qt->name,
              (long long)n, (double)f, ref, gamma * mag);
      }
      free(row);
      free(x);
      free(w);
    }
  }
}

static void test_bad_sizes(void) {
  for (size_t t = 0; t < qmoe_qtype_count(); t++) {
    const qmoe_qtype_info *qt = qmoe_qtype_at(t);
    if (qt->block_elements == 1) continue;
    unsigned char blk[1024] = { 0 };
    float y[1024], x[1024] = { 0 };
    int64_t n = qt->block_elements + 1;
    CHECK(qt->dequant_row(blk, y, n) == QMOE_EINVAL, "%s dequant_row accepted n = %lld", qt->name, (long long)n);
    CHECK(strstr(qmoe_last_error(), qt->name) != NULL, "%s: error does not name the qtype: %s", qt->name, qmoe_last_error());
    if (qt->dot_f32) CHECK(isnan(qt->dot_f32(blk, x, n)), "%s dot_f32 accepted n = %lld", qt->name, (long long)n);
    if (qt->dot_f64) CHECK(isnan(qt->dot_f64(blk, x, n)), "%s dot_f64 accepted n = %lld", qt->name, (long long)n);
    CHECK(qt->quantize_row(x, blk, n) == QMOE_EINVAL, "%s quantize_row accepted n = %lld", qt->name, (long long)n);
  }
  float nanx[256];
  for (int i = 0; i < 256; i++) nanx[i] = 1.0f;
  nanx[17] = NAN;
  unsigned char out[512];
  CHECK(qmoe_quantize_row(12, nanx, out, 256) == QMOE_EINVAL && strstr(qmoe_last_error(), "src[17]"),
        "q4_k quantize of a NaN: %s", qmoe_last_error());
  CHECK(qmoe_quantize_row(9999, nanx, out, 256) == QMOE_EUNSUPPORTED, "quantize of an unknown type did not fail");
}

/* ---- quantizer round trip ------------------------------------------------------------------------- */

static double rms_error(const qmoe_qtype_info *qt, const float *x, int64_t n, double *rms_x) {
  unsigned char *q = malloc((size_t)qmoe_qtype_row_bytes(qt, n));
  float *y = malloc(sizeof(float) * (size_t)n);
  double e = 0, s = 0;
  if (!q || !y || qt->quantize_row(x, q, n) != 0 || qt->dequant_row(q, y, n) != 0) e = INFINITY;
  else
    for (int64_t i = 0; i < n; i++) {
      double d = (double)y[i] - x[i];
      e += d * d;
      s += (double)x[i] * x[i];
    }
  free(q);
  free(y);
  if (rms_x) *rms_x = sqrt(s / n);
  return sqrt(e / n);
}

static void test_quantize_gaussian(void) {
  const int64_t n = 4096;
  float *x = malloc(sizeof(float) * n);
  REQUIRE(x, "out of memory");
  for (size_t t = 0; t < qmoe_qtype_count(); t++) {
    const qmoe_qtype_info *qt = qmoe_qtype_at(t);
    /* The bound and its source are in the format's contract (quantizer.rmse_max, quantizer.source). */
    double bound = qt->rmse_max;
    if (bound < 0) {
      t_fail(__FILE__, __LINE__, "%s: its contract states no quantizer.rmse_max; add one with its source", qt->name);
      continue;
    }
    double worst = 0;
    for (int rep = 0; rep < 4; rep++) {
      for (int64_t i = 0; i < n; i++) x[i] = (float)t_rand_normal();
      double rms_x, e = rms_error(qt, x, n, &rms_x);
      if (e / rms_x > worst) worst = e / rms_x;
    }
    printf("# %-5s RMSE/RMS(x) on N(0,1) rows of %lld: %.5f (bound %.5f)\n", qt->name, (long long)n, worst, bound);
    CHECK(worst <= bound, "%s round-trip RMSE/RMS(x) %.5f exceeds %.5f", qt->name, worst, bound);
  }
  free(x);
}

/* llama.cpp's test-quantize-fns: x[i] = 0.1 + 2·cos(i + offset) over 4096 values; sqrt(Σ err²)/n must stay
 * below the contract's quantizer.total_error_max (default 0.002, llama.cpp's MAX_QUANTIZATION_TOTAL_ERROR for
 * formats of 4 bits and more; it allows more for fewer bits: 0.0075 for 2 bits, 0.0040 for 3). */
static void test_quantize_llama_synthetic(void) {
  const int64_t n = 4096;
  float *x = malloc(sizeof(float) * n);
  REQUIRE(x, "out of memory");
  for (size_t t = 0; t < qmoe_qtype_count(); t++) {
    const qmoe_qtype_info *qt = qmoe_qtype_at(t);
    for (int64_t i = 0; i < n; i++) x[i] = (float)(0.1 + 2 * cosf((float)i + 0.0f));
    double e = rms_error(qt, x, n, NULL);
    double total = e * sqrt((double)n) / (double)n; /* = sqrt(Σ err²) / n */
    printf("# %-5s llama.cpp total quantization error: %.6f (max %g)\n", qt->name, total, qt->total_error_max);
    CHECK(total < qt->total_error_max, "%s total quantization error %.6f >= %g (llama.cpp test-quantize-fns)", qt->name,
          total, qt->total_error_max);
  }
  free(x);
}

/* Each block of a quantized row depends only on its own values; zeros quantize to zeros. */
static void test_quantize_blocks_independent(void) {
  for (size_t t = 0; t < qmoe_qtype_count(); t++) {
    const qmoe_qtype_info *qt = qmoe_qtype_at(t);
    int64_t be = qt->block_elements, n = 2 * be;
    float *x = calloc((size_t)n, sizeof(float)), *y = malloc(sizeof(float) * (size_t)n);
    unsigned char *a = malloc((size_t)qmoe_qtype_row_bytes(qt, n)), *b = malloc((size_t)qt->block_bytes);
    REQUIRE(x && y && a && b, "out of memory");
    for (int64_t i = be; i < n; i++) x[i] = (float)t_rand_normal();
    REQUIRE(qt->quantize_row(x, a, n) == 0, "%s: %s", qt->name, qmoe_last_error());
    REQUIRE(qt->quantize_row(x + be, b, be) == 0, "%s: %s", qt->name, qmoe_last_error());
    CHECK(memcmp(a + qt->block_bytes, b, (size_t)qt->block_bytes) == 0, "%s: block 1 differs when quantized alone", qt->name);
    REQUIRE(qt->dequant_row(a, y, n) == 0, "%s: %s", qt->name, qmoe_last_error());
    for (int64_t i = 0; i < be; i++)
      if (y[i] != 0) { t_fail(__FILE__, __LINE__, "%s: a zero block decodes to %g at %lld", qt->name, (double)y[i], (long long)i); break; }
    free(x); free(y); free(a); free(b);
  }
}

/* qmoe_quant_random_blocks: every block decodes to finite values, not all zero; reproducible by seed; the
 * bytes vary with the seed; bad sizes are refused. */
static void test_random_blocks(void) {
  for (size_t t = 0; t < qmoe_qtype_count(); t++) {
    const qmoe_qtype_info *qt = qmoe_qtype_at(t);
    int64_t be = qt->block_elements, n = be * (be == 1 ? 64 : 8), nb = qmoe_qtype_row_bytes(qt, n);
    uint64_t seed = t_rand_u64();
    unsigned char *a = malloc((size_t)nb), *b = malloc((size_t)nb), *c = malloc((size_t)nb);
    float *y = malloc(sizeof(float) * (size_t)n);
    REQUIRE(a && b && c && y, "out of memory");
    REQUIRE(qmoe_quant_random_blocks(qt->ggml_type, seed, a, n) == 0, "%s: %s", qt->name, qmoe_last_error());
    REQUIRE(qmoe_quant_random_blocks(qt->ggml_type, seed, b, n) == 0, "%s: %s", qt->name, qmoe_last_error());
    REQUIRE(qmoe_quant_random_blocks(qt->ggml_type, seed + 1, c, n) == 0, "%s: %s", qt->name, qmoe_last_error());
    CHECK(memcmp(a, b, (size_t)nb) == 0, "%s: the same seed gave different blocks", qt->name);
    CHECK(memcmp(a, c, (size_t)nb) != 0, "%s: seeds %llu and +1 gave the same blocks", qt->name, (unsigned long long)seed);
    REQUIRE(qt->dequant_row(a, y, n) == 0, "%s: %s", qt->name, qmoe_last_error());
    for (int64_t k = 0; k < n / be; k++) {
      int nonzero = 0;
      for (int64_t i = 0; i < be; i++) {
        if (!isfinite(y[k * be + i])) {
          t_fail(__FILE__, __LINE__, "%s: block %lld decodes to %g", qt->name, (long long)k, (double)y[k * be + i]);
          break;
        }
        nonzero |= y[k * be + i] != 0;
      }
      if (be > 1 && !nonzero) t_fail(__FILE__, __LINE__, "%s: block %lld decodes to all zeros", qt->name, (long long)k);
    }
    if (be > 1)
      CHECK(qmoe_quant_random_blocks(qt->ggml_type, seed, a, n + 1) == QMOE_EINVAL, "%s: n + 1 elements not refused", qt->name);
    free(a); free(b); free(c); free(y);
  }
  unsigned char blk[64];
  CHECK(qmoe_quant_random_blocks(9999, 1, blk, 32) == QMOE_EUNSUPPORTED, "random blocks of an unknown type did not fail");
}

int main(int argc, char **argv) {
  if (argc == 3 && (!strcmp(argv[1], "--dequant") || !strcmp(argv[1], "--quantize"))) return driver(argv[1], argv[2]);
  if (argc != 1) {
    fprintf(stderr, "usage: test_quant [--dequant QTYPE | --quantize QTYPE]\n");
    return 2;
  }
  t_seed();
  RUN(test_dot);
  RUN(test_bad_sizes);
  RUN(test_quantize_gaussian);
  RUN(test_quantize_llama_synthetic);
  RUN(test_quantize_blocks_independent);
  RUN(test_random_blocks);
  return T_DONE();
}
