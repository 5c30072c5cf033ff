/* test_output.c: runtime/core/output.c (same-file refusal, temp file and rename, abort, umask, devices), the GGUF
 * writer's inputs and UTF-8 name checks, qmoe_utf8_seq_len against hand-made cases, and
 * qmoe_qtype_check_row: no refusal of normal random rows of any scale for any qtype, refusal of the rest. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "../harness.h"
#include "qmoe.h"

static char dir[64];

static void path_in(char *buf, size_t cap, const char *name) { snprintf(buf, cap, "%s/%s", dir, name); }

static void write_file(const char *path, const char *text) {
  FILE *fp = fopen(path, "wb");
  if (fp) fputs(text, fp), fclose(fp);
}

static int file_is(const char *path, const char *text) {
  char buf[256] = { 0 };
  FILE *fp = fopen(path, "rb");
  if (!fp) return 0;
  size_t n = fread(buf, 1, sizeof buf - 1, fp);
  fclose(fp);
  return n == strlen(text) && !memcmp(buf, text, n);
}

/* No name with ".tmp" left in dir. */
static int no_temp(void) {
  char cmd[128];
  snprintf(cmd, sizeof cmd, "ls -a %s | grep -q '\\.tmp'", dir);
  return system(cmd) != 0;
}

static void test_same_file(void) {
  char in[128], sym[128], hard[128];
  path_in(in, sizeof in, "in");
  path_in(sym, sizeof sym, "sym");
  path_in(hard, sizeof hard, "hard");
  write_file(in, "input");
  unlink(sym);
  unlink(hard);
  REQUIRE(symlink(in, sym) == 0 && link(in, hard) == 0, "links");
  const char *inputs[] = { "/nonexistent", in };
  const char *outs[] = { in, sym, hard };
  for (int i = 0; i < 3; i++) {
    qmoe_out *o = NULL;
    CHECK(qmoe_out_open(outs[i], inputs, 2, 0, &o) == QMOE_EINVAL && !o, "%s accepted as the output", outs[i]);
    CHECK(strstr(qmoe_last_error(), "is the input file") && strstr(qmoe_last_error(), in), "message: %s", qmoe_last_error());
  }
  CHECK(file_is(in, "input") && no_temp(), "input changed or temp left");
}

static void test_commit_abort(void) {
  char out[128];
  path_in(out, sizeof out, "out");
  write_file(out, "old");
  qmoe_out *o;
  REQUIRE(qmoe_out_open(out, NULL, 0, 3, &o) == 0, "open: %s", qmoe_last_error());
  CHECK(qmoe_out_write(o, "new", 3) == 0, "write");
  CHECK(file_is(out, "old") && !no_temp(), "the target changed before commit, or no temp file");
  qmoe_out_abort(o);
  CHECK(file_is(out, "old") && no_temp(), "abort changed the target or left the temp file");
  mode_t old_mask = umask(027);
  REQUIRE(qmoe_out_open(out, NULL, 0, 0, &o) == 0, "open: %s", qmoe_last_error());
  umask(old_mask);
  CHECK(qmoe_out_write(o, "new", 3) == 0 && qmoe_out_commit(o) == 0, "commit: %s", qmoe_last_error());
  struct stat st;
  CHECK(file_is(out, "new") && no_temp(), "commit did not replace the target");
  CHECK(stat(out, &st) == 0 && (st.st_mode & 0777) == 0640, "mode %o, want 0640 (0666 minus umask 027)", st.st_mode & 0777);
  char missing[160];
  snprintf(missing, sizeof missing, "%s/no-such-dir/x", dir);
  CHECK(qmoe_out_open(missing, NULL, 0, 0, &o) == QMOE_EIO && strstr(qmoe_last_error(), "does not exist"),
        "missing dir: %s", qmoe_last_error());
  CHECK(qmoe_out_open(dir, NULL, 0, 0, &o) == QMOE_EINVAL && strstr(qmoe_last_error(), "directory"), "a directory: %s",
        qmoe_last_error());
  CHECK(qmoe_out_open(out, NULL, 0, UINT64_MAX / 2, &o) == QMOE_EIO && strstr(qmoe_last_error(), "bytes free"),
        "free space: %s", qmoe_last_error());
}

static void test_device(void) {
  qmoe_out *o;
  REQUIRE(qmoe_out_open("/dev/null", NULL, 0, 0, &o) == 0, "open /dev/null: %s", qmoe_last_error());
  CHECK(qmoe_out_write(o, "x", 1) == 0 && qmoe_out_commit(o) == 0, "write /dev/null: %s", qmoe_last_error());
  struct stat st;
  CHECK(stat("/dev/null", &st) == 0 && S_ISCHR(st.st_mode), "/dev/null is no longer a device");
  if (access("/dev/full", W_OK) != 0) SKIP("no writable /dev/full");
  REQUIRE(qmoe_out_open("/dev/full", NULL, 0, 0, &o) == 0, "open /dev/full: %s", qmoe_last_error());
  CHECK(qmoe_out_write(o, "x", 1) == 0, "buffered write");
  CHECK(qmoe_out_commit(o) == QMOE_EIO && strstr(qmoe_last_error(), "No space"), "/dev/full: %s", qmoe_last_error());
  CHECK(stat("/dev/full", &st) == 0 && S_ISCHR(st.st_mode), "/dev/full was removed");
}

static void test_writer(void) {
  char in[128], out[128];
  path_in(in, sizeof in, "w-in");
  path_in(out, sizeof out, "w-out");
  write_file(in, "not a gguf");
  qmoe_gguf_writer *w = qmoe_gguf_writer_new();
  CHECK(qmoe_gguf_writer_set_u32(w, "bad\xff", 1) == QMOE_EINVAL && strstr(qmoe_last_error(), "not valid UTF-8") &&
        strstr(qmoe_last_error(), "\\xff"), "key: %s", qmoe_last_error());
  float x[32] = { 1 };
  int64_t ne[1] = { 32 };
  CHECK(qmoe_gguf_writer_add_tensor(w, "t\xc0\x80", 0, 1, ne, x) == QMOE_EINVAL, "overlong NUL accepted in a name");
  qmoe_gguf_writer_set_verbatim_names(w, 1);
  CHECK(qmoe_gguf_writer_set_u32(w, "bad\xff", 1) == 0, "verbatim key: %s", qmoe_last_error());
  CHECK(qmoe_gguf_writer_add_tensor(w, "t\xc0\x80", 0, 1, ne, x) == 0, "verbatim name: %s", qmoe_last_error());
  CHECK(qmoe_gguf_writer_add_input(w, in) == 0, "add_input");
  CHECK(qmoe_gguf_writer_write(w, in) == QMOE_EINVAL && file_is(in, "not a gguf"), "written over its input");
  qmoe_gguf_writer_free(w);
  w = qmoe_gguf_writer_new();
  qmoe_gguf_writer_set_verbatim_names(w, 1);
  qmoe_gguf_writer_set_u32(w, "bad\xff", 1);
  qmoe_gguf_writer_add_input(w, in);
  CHECK(qmoe_gguf_writer_write(w, out) == 0, "write: %s", qmoe_last_error());
  qmoe_gguf *f;
  CHECK(qmoe_gguf_open(out, &f) == 0 && qmoe_gguf_find_key(f, "bad\xff") == 0, "read back: %s", qmoe_last_error());
  qmoe_gguf_close(f);
  qmoe_gguf_writer_free(w);
  CHECK(no_temp(), "temp left");
}

static void test_utf8(void) {
  static const struct { const char *s; size_t len; size_t want; } cases[] = {
    { "a", 1, 1 }, { "\xc3\xa9", 2, 2 }, { "\xe2\x82\xac", 3, 3 }, { "\xf0\x9f\x98\x80", 4, 4 },
    { "\xc0\x80", 2, 0 },         /* overlong NUL */
    { "\xc1\xbf", 2, 0 },         /* overlong */
    { "\xe0\x80\xaf", 3, 0 },     /* overlong '/' */
    { "\xed\xa0\x80", 3, 0 },     /* surrogate U+D800 */
    { "\xf4\x90\x80\x80", 4, 0 }, /* U+110000 */
    { "\xf5\x80\x80\x80", 4, 0 }, { "\x80", 1, 0 }, { "\xff", 1, 0 },
    { "\xe2\x82", 2, 0 },         /* truncated */
    { "\xe2\x28\xa1", 3, 0 },     /* bad continuation */
    { "\xef\xbf\xbf", 3, 3 },     /* U+FFFF */
    { "\xf4\x8f\xbf\xbf", 4, 4 }, /* U+10FFFF */
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
    CHECK(qmoe_utf8_seq_len(cases[i].s, cases[i].len) == cases[i].want, "case %zu: %zu, want %zu", i,
          qmoe_utf8_seq_len(cases[i].s, cases[i].len), cases[i].want);
  CHECK(qmoe_utf8_check("ab\xe2\x82\xac\xff", 6) == 5 && qmoe_utf8_check("ab", 2) == -1, "utf8_check");
}

/* Every quantizable qtype keeps normal random rows of any scale (no false refusals), and refuses a row
 * whose values the format cannot hold (checked against what its own decode of the encoding gives). */
static void test_check_row(void) {
  enum { N = 1024 };
  float *x = malloc(N * sizeof *x), *scratch = malloc(N * sizeof *scratch);
  unsigned char *enc = malloc(N * 8);
  REQUIRE(x && scratch && enc, "oom");
  int checked = 0;
  for (size_t q = 0; q < qmoe_qtype_count(); q++) {
    const qmoe_qtype_info *qt = qmoe_qtype_at(q);
    if (!qt->quantize_row || !qt->dequant_row || N % qt->block_elements) continue;
    static const double scales[] = { 1e-3, 0.02, 1, 30, 1000 };
    for (int s = 0; s < 5; s++) {
      for (int i = 0; i < N; i++) x[i] = (float)(scales[s] * t_rand_normal());
      CHECK(qt->quantize_row(x, enc, N) == 0, "%s quantize", qt->name);
      CHECK(qmoe_qtype_check_row(qt, x, enc, N, scratch) == 0, "%s refuses normal data of scale %g: %s", qt->name,
            scales[s], qmoe_last_error());
    }
    /* A row of 3.4e38: finite input; whether refused must agree with an own look at the decoded values. */
    for (int i = 0; i < N; i++) x[i] = 3.4e38f;
    if (qt->quantize_row(x, enc, N) != 0) continue;
    qt->dequant_row(enc, scratch, N);
    int holds = 1;
    for (int i = 0; i < N; i++)
      if (!isfinite(scratch[i]) || fabs((double)scratch[i] - 3.4e38) > 1.7e38) holds = 0;
    int rc = qmoe_qtype_check_row(qt, x, enc, N, scratch);
    CHECK((rc == 0) == holds, "%s: 3.4e38 %s but check_row says %d (%s)", qt->name, holds ? "holds" : "is lost", rc,
          qmoe_last_error());
    checked++;
  }
  CHECK(checked >= 8, "only %d qtypes checked", checked);
  free(x);
  free(scratch);
  free(enc);
}

int main(void) {
  t_seed();
  snprintf(dir, sizeof dir, "/tmp/qmoe-test-output-XXXXXX");
  if (!mkdtemp(dir)) return 1;
  RUN(test_same_file);
  RUN(test_commit_abort);
  RUN(test_device);
  RUN(test_writer);
  RUN(test_utf8);
  RUN(test_check_row);
  char cmd[128];
  snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
  if (system(cmd) != 0) return 1;
  return T_DONE();
}
