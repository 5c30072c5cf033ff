/* sample.c: choosing the next token on the host from downloaded logits — greedy, or seeded temperature /
 * top-k / top-p sampling (qmoe_sample in qmoe.h). */
#include <math.h>
#include <stdlib.h>
#include "qmoe.h"

/* xorshift64*: small, seedable, the same sequence on every machine. */
static uint64_t next_u64(uint64_t *s) {
  uint64_t x = *s ? *s : 0x9E3779B97F4A7C15ull;
  x ^= x >> 12, x ^= x << 25, x ^= x >> 27;
  *s = x;
  return x * 0x2545F4914F6CDD1Dull;
}

typedef struct { double p; int32_t id; } cand;

static int by_prob(const void *a, const void *b) {
  const cand *x = a, *y = b;
  if (x->p != y->p) return x->p < y->p ? 1 : -1;
  return (x->id > y->id) - (x->id < y->id);
}

int qmoe_sample(const qmoe_sampler *s, const float *logits, int64_t n, uint64_t *rng, int32_t *out) {
  if (n < 1 || n > INT32_MAX) {
    qmoe_set_error("sample: %lld logits", (long long)n);
    return QMOE_EINVAL;
  }
  for (int64_t i = 0; i < n; i++)
    if (!isfinite(logits[i])) {
      qmoe_set_error("sample: logit %lld is not finite (%g)", (long long)i, (double)logits[i]);
      return QMOE_EINVAL;
    }
  if (!(s->temperature >= 0) || !(s->top_p > 0 && s->top_p <= 1) || s->top_k < 0) {
    qmoe_set_error("sample: temperature %g must be >= 0, top_p %g in (0, 1], top_k %lld >= 0", s->temperature,
                   s->top_p, (long long)s->top_k);
    return QMOE_EINVAL;
  }
  int64_t best = 0;
  for (int64_t i = 1; i < n; i++)
    if (logits[i] > logits[best]) best = i;
  if (s->temperature == 0) {
    *out = (int32_t)best;
    return 0;
  }
  cand *c = malloc((size_t)n * sizeof *c);
  if (!c) {
    qmoe_set_error("sample: out of host memory");
    return QMOE_ENOMEM;
  }
  double mx = logits[best], sum = 0;
  for (int64_t i = 0; i < n; i++) {
    c[i].p = exp(((double)logits[i] - mx) / s->temperature);
    c[i].id = (int32_t)i;
    sum += c[i].p;
  }
  qsort(c, (size_t)n, sizeof *c, by_prob);
  int64_t keep = s->top_k > 0 && s->top_k < n ? s->top_k : n;
  double mass = 0;
  for (int64_t i = 0; i < keep; i++) c[i].p /= sum;
  int64_t k = 0;
  for (; k < keep; k++) {
    mass += c[k].p;
    if (mass >= s->top_p) {
      k++;
      break;
    }
  }
  if (k > keep) k = keep;
  double total = 0;
  for (int64_t i = 0; i < k; i++) total += c[i].p;
  double r = (double)(next_u64(rng) >> 11) * 0x1.0p-53 * total;
  int32_t pick = c[k - 1].id;
  for (int64_t i = 0; i < k; i++) {
    if (r < c[i].p) {
      pick = c[i].id;
      break;
    }
    r -= c[i].p;
  }
  free(c);
  *out = pick;
  return 0;
}
