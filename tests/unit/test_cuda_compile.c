/* test_cuda_compile.c: compiles every embedded CUDA kernel (qmoe_embedded_cuda[]) with NVRTC for sm_90 to CUBIN
 * with ptxas -v and reports registers, spills and shared memory per kernel. Needs no GPU, only NVRTC.
 * Rules: any NVRTC error or warning fails; any register spill (spill stores or loads > 0) fails — a kernel that
 * spills is slow, or indexes a register array at run time, which we never intend. A stack frame without spills
 * (libdevice's slow-path trig argument reduction in rope_neox) is reported as stack=N, not failed.
 * Usage: test_cuda_compile [--arch NN] [FILE.cu ...]  (files instead of the embedded table, for development) */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "../harness.h"
#include "cuda_internal.h"
#include "qmoe.h"

static int arch = 90;
static const char *cur_name, *cur_src;

static void compile_one(void) {
  qmoe_cuda_variant v;
  REQUIRE(qmoe_cuda_variant_parse(cur_name, cur_src, &v) == 0, "%s", qmoe_last_error());
  const qmoe_cuda_nvrtc *nv;
  int rc = qmoe_cuda_nvrtc_load(&nv);
  if (rc == QMOE_ENODEV) SKIP("%s", qmoe_last_error());
  REQUIRE(rc == 0, "%s", qmoe_last_error());
  const char *extra[] = { "--ptxas-options=-v" };
  void *cubin = NULL;
  size_t size = 0;
  char *log = NULL;
  rc = qmoe_cuda_compile(cur_src, v.entry, arch, extra, 1, &cubin, &size, &log);
  REQUIRE(rc == 0, "%s", qmoe_last_error());
  qmoe_cuda_ptxas_info pi;
  int prc = qmoe_cuda_parse_ptxas(log, v.entry, &pi);
  CHECK(prc == 0, "no ptxas -v report for entry %s in the NVRTC log:\n%s", v.entry, log);
  if (prc == 0) {
    CHECK(pi.spill_stores == 0 && pi.spill_loads == 0,
          "%s spills: %d bytes stack frame, %d bytes spill stores, %d bytes spill loads", v.entry, pi.stack,
          pi.spill_stores, pi.spill_loads);
    /* The name the harness prints carries the figures. */
    static char name[256];
    int n = snprintf(name, sizeof name, "nvrtc/%s regs=%d spill=%d smem=%d", cur_name, pi.regs,
                     pi.spill_stores + pi.spill_loads, pi.smem);
    if (pi.stack > 0) n += snprintf(name + n, sizeof name - (size_t)n, " stack=%d", pi.stack);
    /* own_tokens kernels: the many-token entry must not spill either */
    qmoe_cuda_ptxas_info ti;
    if (v.tok_entry[0]) {
      int trc = qmoe_cuda_parse_ptxas(log, v.tok_entry, &ti);
      CHECK(trc == 0, "no ptxas -v report for entry %s in the NVRTC log", v.tok_entry);
      if (trc == 0) {
        CHECK(ti.spill_stores == 0 && ti.spill_loads == 0, "%s spills: %d bytes spill stores, %d bytes spill loads",
              v.tok_entry, ti.spill_stores, ti.spill_loads);
        snprintf(name + n, sizeof name - (size_t)n, " tok_regs=%d", ti.regs);
      }
    }
    t_case_name = name;
  }
  for (const char *p = log; (p = strstr(p, "warning")) != NULL; p++) {
    const char *bol = p;
    while (bol > log && bol[-1] != '\n') bol--;
    const char *eol = strchr(p, '\n');
    CHECK(0, "NVRTC warning: %.*s", (int)(eol ? eol - bol : (long)strlen(bol)), bol);
    break;
  }
  free(cubin);
  free(log);
}

/* t_run prints t_case_name as it was when the case began; print our own line with the figures instead. */
static void run_case(const char *name, const char *src) {
  char label[256];
  snprintf(label, sizeof label, "nvrtc/%s", name);
  cur_name = name;
  cur_src = src;
  t_case_name = label;
  t_case_failed = t_case_skipped = 0;
  t_case_why[0] = 0;
  compile_one();
  if (t_case_failed) {
    printf("not ok %s: %s\n", t_case_name, t_case_why);
    t_failed_total++;
  } else if (t_case_skipped) {
    printf("skip %s: %s\n", t_case_name, t_case_why);
  } else {
    printf("ok %s\n", t_case_name);
  }
  fflush(stdout);
}

static char *read_file(const char *path) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  char *s = malloc((size_t)n + 1);
  if (!s || fread(s, 1, (size_t)n, f) != (size_t)n) abort();
  s[n] = 0;
  fclose(f);
  return s;
}

int main(int argc, char **argv) {
  (void)t_run; /* cases are run by run_case, which prints the figures in the ok line */
  int nfiles = 0;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--arch") && i + 1 < argc) arch = atoi(argv[++i]);
    else nfiles++;
  }
  if (nfiles) {
    for (int i = 1; i < argc; i++) {
      if (!strcmp(argv[i], "--arch")) { i++; continue; }
      char *src = read_file(argv[i]);
      if (!src) {
        printf("not ok nvrtc/%s: cannot read it\n", argv[i]);
        t_failed_total++;
        continue;
      }
      const char *base = strrchr(argv[i], '/');
      char name[128];
      snprintf(name, sizeof name, "%s", base ? base + 1 : argv[i]);
      char *dot = strrchr(name, '.');
      if (dot) *dot = 0;
      run_case(name, src);
      free(src);
    }
    return T_DONE();
  }
  if (qmoe_embedded_cuda_count == 0) {
    printf("not ok nvrtc/embedded: libqmoe embeds no CUDA kernels (generated/cuda/*.cu missing from the build)\n");
    return 1;
  }
  for (size_t i = 0; i < qmoe_embedded_cuda_count; i++)
    run_case(qmoe_embedded_cuda[i].name, (const char *)qmoe_embedded_cuda[i].data);
  return T_DONE();
}
