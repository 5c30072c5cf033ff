/* test_cuda_runtime.c: the CUDA runtime's host side, which needs no GPU: what opening says without a driver, the
 * cache directory and key, the cache file format, ptxas report parsing, NVRTC error reporting, and that the
 * embedded kernel table holds exactly the variants the stage contracts list. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "../harness.h"
#include "backend.h"
#include "cuda_internal.h"
#include "qmoe.h"
#include "stage_table.h"

/* Without libcuda.so.1 the backend says so plainly; with a driver and a device it opens. */
static void test_open_says_why(void) {
  qmoe_backend *be = NULL;
  int rc = qmoe_backend_open("cuda", &be);
  if (rc == 0) {
    CHECK(be && !strcmp(be->name, "cuda"), "opened backend is not named cuda");
    qmoe_cuda_ctx *c = qmoe_backend_cuda_ctx(be);
    CHECK(c && c->cc_major > 0, "no device context");
    if (c) printf("# opened %s (sm_%d%d, %d SMs, driver %d)\n", c->name, c->cc_major, c->cc_minor, c->sm_count,
                  c->driver_version);
    be->close(be);
    return;
  }
  CHECK(rc == QMOE_ENODEV, "qmoe_backend_open(cuda) = %d, want 0 or QMOE_ENODEV: %s", rc, qmoe_last_error());
  const char *m = qmoe_last_error();
  CHECK(strstr(m, "no CUDA driver found (libcuda.so.1)") || strstr(m, "no CUDA device found"),
        "message does not say plainly what is missing: \"%s\"", m);
  CHECK(be == NULL, "out not NULL after failure");
  /* Asking again gives the same answer (the failed load is remembered, not retried into a crash). */
  rc = qmoe_backend_open("cuda", &be);
  CHECK(rc == QMOE_ENODEV && !strcmp(qmoe_last_error(), m), "second open differs: %d %s", rc, qmoe_last_error());
}

static void set_or_unset(const char *k, const char *v) {
  if (v) setenv(k, v, 1);
  else unsetenv(k);
}

static void test_cache_dir(void) {
  char *old_c = getenv("QMOE_CUDA_CACHE") ? strdup(getenv("QMOE_CUDA_CACHE")) : NULL;
  char *old_x = getenv("XDG_CACHE_HOME") ? strdup(getenv("XDG_CACHE_HOME")) : NULL;
  char *old_h = getenv("HOME") ? strdup(getenv("HOME")) : NULL;
  char buf[1024];
  setenv("QMOE_CUDA_CACHE", "0", 1);
  qmoe_cuda_cache_dir(buf, sizeof buf);
  CHECK(buf[0] == 0, "QMOE_CUDA_CACHE=0 should disable the cache, got '%s'", buf);
  setenv("QMOE_CUDA_CACHE", "/tmp/somewhere/qc", 1);
  qmoe_cuda_cache_dir(buf, sizeof buf);
  CHECK(!strcmp(buf, "/tmp/somewhere/qc"), "QMOE_CUDA_CACHE: got '%s'", buf);
  unsetenv("QMOE_CUDA_CACHE");
  setenv("XDG_CACHE_HOME", "/x/cache", 1);
  setenv("HOME", "/home/u", 1);
  qmoe_cuda_cache_dir(buf, sizeof buf);
  CHECK(!strcmp(buf, "/x/cache/qmoe/cuda"), "XDG_CACHE_HOME: got '%s'", buf);
  unsetenv("XDG_CACHE_HOME");
  qmoe_cuda_cache_dir(buf, sizeof buf);
  CHECK(!strcmp(buf, "/home/u/.cache/qmoe/cuda"), "HOME: got '%s'", buf);
  set_or_unset("QMOE_CUDA_CACHE", old_c);
  set_or_unset("XDG_CACHE_HOME", old_x);
  set_or_unset("HOME", old_h);
  free(old_c);
  free(old_x);
  free(old_h);
}

static void test_cache_key(void) {
  char a[33], b[33];
  qmoe_cuda_cache_key("src", 90, 13, 0, 13000, a);
  CHECK(strlen(a) == 32 && strspn(a, "0123456789abcdef") == 32, "key '%s' is not 32 hex digits", a);
  qmoe_cuda_cache_key("src", 90, 13, 0, 13000, b);
  CHECK(!strcmp(a, b), "the key is not deterministic");
  const struct { const char *src; int arch, maj, min, drv; const char *what; } diff[] = {
    { "srd", 90, 13, 0, 13000, "source" },  { "src", 89, 13, 0, 13000, "architecture" },
    { "src", 90, 12, 0, 13000, "NVRTC major" }, { "src", 90, 13, 1, 13000, "NVRTC minor" },
    { "src", 90, 13, 0, 12080, "driver version" },
  };
  for (size_t i = 0; i < sizeof diff / sizeof diff[0]; i++) {
    qmoe_cuda_cache_key(diff[i].src, diff[i].arch, diff[i].maj, diff[i].min, diff[i].drv, b);
    CHECK(strcmp(a, b) != 0, "changing the %s does not change the key", diff[i].what);
  }
}

/* A written CUBIN reads back; a truncated or corrupted one is rejected and removed. */
static void test_cache_file(void) {
  char dir[] = "/tmp/qmoe-cuda-cache-XXXXXX";
  REQUIRE(mkdtemp(dir), "mkdtemp failed");
  char sub[256], path[512];
  snprintf(sub, sizeof sub, "%s/a/b", dir);
  snprintf(path, sizeof path, "%s/k-0123.cubin", sub);
  unsigned char bin[1000];
  for (size_t i = 0; i < sizeof bin; i++) bin[i] = (unsigned char)t_rand_u64();
  qmoe_cuda_cache_write(sub, path, bin, sizeof bin);
  size_t n = 0;
  unsigned char *got = qmoe_cuda_cache_read(path, &n);
  CHECK(got && n == sizeof bin && !memcmp(got, bin, n), "cache round trip failed");
  free(got);
  /* flip one byte of the CUBIN */
  FILE *f = fopen(path, "r+b");
  REQUIRE(f, "cannot reopen %s", path);
  fseek(f, 24 + 500, SEEK_SET);
  fputc(bin[500] ^ 0x40, f);
  fclose(f);
  got = qmoe_cuda_cache_read(path, &n);
  CHECK(got == NULL, "a corrupted cache file was accepted");
  free(got);
  CHECK(access(path, F_OK) != 0, "a corrupted cache file was not removed");
  /* truncated */
  qmoe_cuda_cache_write(sub, path, bin, sizeof bin);
  REQUIRE(truncate(path, 100) == 0, "truncate failed");
  got = qmoe_cuda_cache_read(path, &n);
  CHECK(got == NULL, "a truncated cache file was accepted");
  free(got);
  /* an unwritable directory is not an error, just no cache */
  qmoe_cuda_cache_write("/proc/qmoe-no", "/proc/qmoe-no/x.cubin", bin, sizeof bin);
  char cmd[600];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  CHECK(system(cmd) == 0, "cleanup failed");
}

static void test_ptxas_parse(void) {
  const char *log =
      "ptxas info    : 0 bytes gmem\n"
      "ptxas info    : Compiling entry function 'qmoe_other' for 'sm_90'\n"
      "ptxas info    : Function properties for qmoe_other\n"
      "    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads\n"
      "ptxas info    : Used 12 registers, used 0 barriers, 352 bytes cmem[0]\n"
      "ptxas info    : Compiling entry function 'qmoe_k' for 'sm_90'\n"
      "ptxas info    : Function properties for qmoe_k\n"
      "    8 bytes stack frame, 12 bytes spill stores, 16 bytes spill loads\n"
      "ptxas info    : Used 72 registers, used 1 barriers, 8 bytes cumulative stack size, 15360 bytes smem, 536 bytes cmem[0]\n";
  qmoe_cuda_ptxas_info pi;
  CHECK(qmoe_cuda_parse_ptxas(log, "qmoe_k", &pi) == 0, "parse failed");
  CHECK(pi.regs == 72 && pi.stack == 8 && pi.spill_stores == 12 && pi.spill_loads == 16 && pi.smem == 15360 &&
            pi.cmem == 536,
        "qmoe_k: regs %d stack %d spills %d/%d smem %d cmem %d", pi.regs, pi.stack, pi.spill_stores, pi.spill_loads,
        pi.smem, pi.cmem);
  CHECK(qmoe_cuda_parse_ptxas(log, "qmoe_other", &pi) == 0 && pi.regs == 12 && pi.smem == 0 && pi.cmem == 352,
        "qmoe_other: regs %d smem %d cmem %d", pi.regs, pi.smem, pi.cmem);
  CHECK(qmoe_cuda_parse_ptxas(log, "qmoe_absent", &pi) != 0, "an absent kernel parsed");
}

/* NVRTC failures carry the kernel name and the compiler's log; unknown architectures are refused. */
static void test_nvrtc_errors(void) {
  const qmoe_cuda_nvrtc *nv;
  int rc = qmoe_cuda_nvrtc_load(&nv);
  if (rc == QMOE_ENODEV) SKIP("%s", qmoe_last_error());
  REQUIRE(rc == 0, "%s", qmoe_last_error());
  const char *bad = "extern \"C\" __global__ void qmoe_broken(float *y) { y[0] = undeclared_thing; }\n";
  void *cubin = NULL;
  size_t n = 0;
  rc = qmoe_cuda_compile(bad, "qmoe_broken", 90, NULL, 0, &cubin, &n, NULL);
  CHECK(rc == QMOE_EDEVICE, "compiling broken source returned %d", rc);
  CHECK(strstr(qmoe_last_error(), "nvrtcCompileProgram failed for kernel qmoe_broken") != NULL,
        "message does not name the call and kernel: %s", qmoe_last_error());
  CHECK(strstr(qmoe_last_error(), "undeclared_thing") != NULL, "message lacks the NVRTC log: %s", qmoe_last_error());
  CHECK(cubin == NULL, "cubin set on failure");
  rc = qmoe_cuda_compile("extern \"C\" __global__ void k(){}", "k", 12, NULL, 0, &cubin, &n, NULL);
  CHECK(rc == QMOE_EUNSUPPORTED && strstr(qmoe_last_error(), "sm_12"), "sm_12: %d %s", rc, qmoe_last_error());
  const char *ok = "extern \"C\" __global__ void qmoe_fine(float *y) { y[threadIdx.x] = 1.0f; }\n";
  char *log = NULL;
  rc = qmoe_cuda_compile(ok, "qmoe_fine", 90, NULL, 0, &cubin, &n, &log);
  CHECK(rc == 0 && cubin && n > 64 && !memcmp(cubin, "\177ELF", 4), "a valid kernel did not give an ELF CUBIN: %d %s",
        rc, qmoe_last_error());
  free(cubin);
  free(log);
}

static const char *acc_str(qmoe_acc a) { return qmoe_acc_name(a); }

/* The embedded table and the stage contracts agree: one variant per (stage, qtype, acc) the contracts list
 * (accumulators also limited by the quant contract), none more, each well-formed. */
static void test_variants_match_contracts(void) {
  REQUIRE(qmoe_embedded_cuda_count > 0, "no embedded CUDA kernels");
  size_t n = qmoe_embedded_cuda_count;
  qmoe_cuda_variant *v = calloc(n, sizeof *v);
  char *seen = calloc(n, 1);
  for (size_t i = 0; i < n; i++) {
    const qmoe_embedded *e = &qmoe_embedded_cuda[i];
    REQUIRE(qmoe_cuda_variant_parse(e->name, (const char *)e->data, &v[i]) == 0, "%s", qmoe_last_error());
    CHECK(strlen((const char *)e->data) == e->size, "%s: size %zu but strlen %zu", e->name, e->size,
          strlen((const char *)e->data));
    char entry[128];
    snprintf(entry, sizeof entry, "qmoe_%s", e->name);
    CHECK(!strcmp(v[i].entry, entry), "%s: entry %s, want %s", e->name, v[i].entry, entry);
    char decl[160];
    snprintf(decl, sizeof decl, "extern \"C\" __global__ void __launch_bounds__(%d", v[i].threads);
    CHECK(strstr((const char *)e->data, decl) != NULL, "%s: no `%s...` entry declaration", e->name, decl);
    CHECK(strstr((const char *)e->data, entry) != NULL, "%s: entry %s not in the source", e->name, entry);
    CHECK(qmoe_stage_by_name(v[i].stage) != NULL, "%s: stage %s is not in the stage table", e->name, v[i].stage);
    if (v[i].ggml_type >= 0) {
      const qmoe_qtype_info *q = qmoe_qtype_by_id(v[i].ggml_type);
      CHECK(q && !strcmp(q->name, v[i].qtype) && q->block_elements == v[i].block_elements &&
                q->block_bytes == v[i].block_bytes,
            "%s: qtype %s (ggml %d, %d/%d) disagrees with the qtype table", e->name, v[i].qtype, v[i].ggml_type,
            v[i].block_elements, v[i].block_bytes);
    }
  }
  int expected = 0;
  for (int s = 0; s < QMOE_STAGE_TABLE_COUNT; s++) {
    const qmoe_stage_info *si = qmoe_stage_info_get((qmoe_stage)s);
    int nq = si->varies_by_qtype ? si->n_qtypes : 1;
    int na = si->varies_by_acc ? si->n_accs : 1;
    for (int qi = 0; qi < nq; qi++) {
      int qt = si->varies_by_qtype ? si->qtypes[qi] : -1;
      const qmoe_qtype_info *q = qt >= 0 ? qmoe_qtype_by_id(qt) : NULL;
      for (int ai = 0; ai < na; ai++) {
        const char *acc = si->varies_by_acc ? acc_str(si->accs[ai]) : "-";
        if (q && si->varies_by_acc && !(q->acc_mask & (1u << si->accs[ai])))
          continue;
        expected++;
        int found = 0;
        for (size_t i = 0; i < n; i++) {
          if (strcmp(v[i].stage, si->name) || v[i].ggml_type != qt || strcmp(v[i].acc, acc)) continue;
          found++;
          seen[i] = 1;
        }
        CHECK(found == 1, "stage %s qtype %s acc %s: %d CUDA variants, want 1", si->name, q ? q->name : "-", acc, found);
      }
    }
  }
  for (size_t i = 0; i < n; i++)
    CHECK(seen[i], "embedded CUDA kernel %s matches no variant of the stage contracts", qmoe_embedded_cuda[i].name);
  CHECK((size_t)expected == n, "%d variants in the contracts, %zu embedded", expected, n);
  printf("# %zu CUDA variants, one per contract variant\n", n);
  free(v);
  free(seen);
}

/* A source without the metadata line is refused with its name. */
static void test_variant_parse_errors(void) {
  qmoe_cuda_variant v;
  CHECK(qmoe_cuda_variant_parse("x", "// nothing here\n", &v) == QMOE_EFORMAT && strstr(qmoe_last_error(), "x"),
        "missing metadata accepted: %s", qmoe_last_error());
  CHECK(qmoe_cuda_variant_parse("y", "// b\n// qmoe-cuda: stage=add qtype=- acc=- entry=qmoe_add\n", &v) ==
            QMOE_EFORMAT,
        "incomplete metadata accepted");
  CHECK(qmoe_cuda_variant_parse("z",
                                "// b\n// qmoe-cuda: stage=add qtype=- ggml_type=-1 acc=- entry=qmoe_add "
                                "block_elements=0 block_bytes=0 threads=256 rows_per_block=0\n",
                                &v) == 0 &&
            v.threads == 256 && v.ggml_type == -1 && !strcmp(v.entry, "qmoe_add"),
        "well-formed metadata rejected: %s", qmoe_last_error());
}

int main(void) {
  t_seed();
  RUN(test_open_says_why);
  RUN(test_cache_dir);
  RUN(test_cache_key);
  RUN(test_cache_file);
  RUN(test_ptxas_parse);
  RUN(test_nvrtc_errors);
  RUN(test_variants_match_contracts);
  RUN(test_variant_parse_errors);
  return T_DONE();
}
