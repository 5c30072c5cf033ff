/* test_sample.c: qmoe_sample (runtime/model/sample.c) — greedy ties, top-k and top-p truncation, the empirical
 * distribution against softmax(logits / T) computed independently here, seeding, and bad input. */
#include "../harness.h"
#include "qmoe.h"

static const float L[6] = { 1.0f, 3.0f, 3.0f, -2.0f, 0.5f, 2.0f };

static void greedy_lowest_index_on_ties(void) {
  qmoe_sampler s = { 0, 0, 1 };
  uint64_t rng = 1;
  int32_t id = -1;
  REQUIRE(qmoe_sample(&s, L, 6, &rng, &id) == 0, "%s", qmoe_last_error());
  CHECK(id == 1, "greedy picked %d, want 1 (first of the tied maxima)", id);
}

/* Draws many tokens and compares frequencies with the truncated, renormalized softmax. */
static void check_distribution(double T, int64_t top_k, double top_p, const double *want) {
  qmoe_sampler s = { T, top_k, top_p };
  uint64_t rng = 12345;
  enum { N = 200000 };
  int count[6] = {0};
  for (int i = 0; i < N; i++) {
    int32_t id = -1;
    REQUIRE(qmoe_sample(&s, L, 6, &rng, &id) == 0, "%s", qmoe_last_error());
    REQUIRE(id >= 0 && id < 6, "id %d", id);
    count[id]++;
  }
  for (int i = 0; i < 6; i++) {
    double f = (double)count[i] / N, sd = sqrt(want[i] * (1 - want[i]) / N);
    CHECK(fabs(f - want[i]) <= 5 * sd + 1e-12, "T=%g k=%lld p=%g: token %d frequency %.5f, want %.5f", T,
          (long long)top_k, top_p, i, f, want[i]);
  }
}

static void softmax_ref(double T, const int *keep, double *p) {
  double mx = -1e300, sum = 0;
  for (int i = 0; i < 6; i++)
    if (keep[i] && L[i] > mx) mx = L[i];
  for (int i = 0; i < 6; i++) sum += p[i] = keep[i] ? exp((L[i] - mx) / T) : 0;
  for (int i = 0; i < 6; i++) p[i] /= sum;
}

static void temperature_full_distribution(void) {
  double p[6];
  softmax_ref(0.7, (int[]){ 1, 1, 1, 1, 1, 1 }, p);
  check_distribution(0.7, 0, 1.0, p);
}

static void top_k_two_keeps_the_tied_pair(void) {
  double p[6];
  softmax_ref(1.0, (int[]){ 0, 1, 1, 0, 0, 0 }, p);
  check_distribution(1.0, 2, 1.0, p);
}

static void top_p_keeps_the_smallest_prefix(void) {
  /* T=1: probabilities sorted 1, 2 (0.386 each), 5 (0.142), 0 (0.052), ...; p=0.8 keeps 1, 2 and 5. */
  double full[6], p[6];
  softmax_ref(1.0, (int[]){ 1, 1, 1, 1, 1, 1 }, full);
  CHECK(full[1] + full[2] < 0.8 && full[1] + full[2] + full[5] >= 0.8, "the fixture's premise changed");
  softmax_ref(1.0, (int[]){ 0, 1, 1, 0, 0, 1 }, p);
  check_distribution(1.0, 0, 0.8, p);
}

static void same_seed_same_tokens(void) {
  qmoe_sampler s = { 1.0, 0, 1 };
  uint64_t a = 99, b = 99, c = 100;
  int diff_seed_differs = 0;
  for (int i = 0; i < 64; i++) {
    int32_t x, y, z;
    REQUIRE(!qmoe_sample(&s, L, 6, &a, &x) && !qmoe_sample(&s, L, 6, &b, &y) && !qmoe_sample(&s, L, 6, &c, &z),
            "%s", qmoe_last_error());
    CHECK(x == y, "draw %d differs for the same seed", i);
    diff_seed_differs |= x != z;
  }
  CHECK(diff_seed_differs, "seeds 99 and 100 gave the same 64 tokens");
}

static void bad_input(void) {
  uint64_t rng = 1;
  int32_t id;
  float bad[3] = { 0, NAN, 1 };
  qmoe_sampler s = { 1, 0, 1 };
  CHECK(qmoe_sample(&s, bad, 3, &rng, &id) == QMOE_EINVAL && strstr(qmoe_last_error(), "not finite"),
        "a NaN logit was accepted: %s", qmoe_last_error());
  qmoe_sampler neg = { -1, 0, 1 }, p0 = { 1, 0, 0 };
  CHECK(qmoe_sample(&neg, L, 6, &rng, &id) == QMOE_EINVAL, "negative temperature accepted");
  CHECK(qmoe_sample(&p0, L, 6, &rng, &id) == QMOE_EINVAL, "top_p 0 accepted");
  CHECK(qmoe_sample(&s, L, 0, &rng, &id) == QMOE_EINVAL, "no logits accepted");
}

int main(void) {
  RUN(greedy_lowest_index_on_ties);
  RUN(temperature_full_distribution);
  RUN(top_k_two_keeps_the_tied_pair);
  RUN(top_p_keeps_the_smallest_prefix);
  RUN(same_seed_same_tokens);
  RUN(bad_input);
  return T_DONE();
}
