/* harness.h: the unit-test harness. Each case prints one line the runner counts:
 *   "ok NAME", "not ok NAME: why" or "skip NAME: why". main() returns non-zero if any case failed. */
#ifndef QMOE_HARNESS_H
#define QMOE_HARNESS_H
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int t_failed_total, t_case_failed, t_case_skipped;
static const char *t_case_name;
static char t_case_why[1024];

static void t_fail(const char *file, int line, const char *fmt, ...) __attribute__((format(printf, 3, 4), unused));
static void t_fail(const char *file, int line, const char *fmt, ...) {
  if (t_case_failed++) return; /* keep the first reason */
  int n = snprintf(t_case_why, sizeof t_case_why, "%s:%d: ", file, line);
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(t_case_why + n, sizeof t_case_why - (size_t)n, fmt, ap);
  va_end(ap);
}

static void t_skip(const char *fmt, ...) __attribute__((format(printf, 1, 2), unused));
static void t_skip(const char *fmt, ...) {
  t_case_skipped = 1;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(t_case_why, sizeof t_case_why, fmt, ap);
  va_end(ap);
}

/* CHECK(cond, fmt, ...): records a failure (the case goes on, so later checks still run). */
#define CHECK(cond, ...) do { if (!(cond)) t_fail(__FILE__, __LINE__, __VA_ARGS__); } while (0)
/* REQUIRE(cond, fmt, ...): records a failure and leaves the case. */
#define REQUIRE(cond, ...) do { if (!(cond)) { t_fail(__FILE__, __LINE__, __VA_ARGS__); return; } } while (0)
#define SKIP(...) do { t_skip(__VA_ARGS__); return; } while (0)

static void t_run(const char *name, void (*fn)(void)) {
  t_case_name = name;
  t_case_failed = t_case_skipped = 0;
  t_case_why[0] = 0;
  fn();
  if (t_case_failed) {
    printf("not ok %s: %s\n", name, t_case_why);
    t_failed_total++;
  } else if (t_case_skipped) {
    printf("skip %s: %s\n", name, t_case_why);
  } else {
    printf("ok %s\n", name);
  }
  fflush(stdout);
}

/* Runs a case under a name built at run time (for table-driven cases). */
#define RUN(fn) t_run(#fn, fn)
#define RUN_NAMED(name, fn) t_run(name, fn)
#define T_DONE() (t_failed_total ? 1 : 0)

/* Deterministic per-run random numbers (xorshift64*), seeded from QMOE_TEST_SEED or the clock so each
 * run sees fresh data; the seed is printed so a failure can be replayed. */
static unsigned long long t_rng_state;
static void t_seed(void) __attribute__((unused));
static void t_seed(void) {
  const char *s = getenv("QMOE_TEST_SEED");
  unsigned long long seed = s ? strtoull(s, NULL, 0) : 0;
  if (!seed) {
    FILE *f = fopen("/dev/urandom", "rb");
    if (!f || fread(&seed, sizeof seed, 1, f) != 1) seed = 0x9E3779B97F4A7C15ull;
    if (f) fclose(f);
  }
  if (!seed) seed = 1;
  t_rng_state = seed;
  printf("# seed %llu (replay with QMOE_TEST_SEED=%llu)\n", seed, seed);
}
static unsigned long long t_rand_u64(void) __attribute__((unused));
static unsigned long long t_rand_u64(void) {
  t_rng_state ^= t_rng_state >> 12;
  t_rng_state ^= t_rng_state << 25;
  t_rng_state ^= t_rng_state >> 27;
  return t_rng_state * 2685821657736338717ull;
}
/* Uniform in [0, 1). */
static double t_rand_unit(void) __attribute__((unused));
static double t_rand_unit(void) { return (double)(t_rand_u64() >> 11) * (1.0 / 9007199254740992.0); }
/* Standard normal (Box-Muller). */
static double t_rand_normal(void) __attribute__((unused));
static double t_rand_normal(void) {
  double u1 = t_rand_unit(), u2 = t_rand_unit();
  if (u1 < 1e-300) u1 = 1e-300;
  return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

#endif
