/* fake_nvrtc.c: a stand-in libnvrtc.so for tests without a GPU: "compiles" a CUDA source by building it as C++
 * with tests/cuda-emu/emu.h ($QMOE_EMU_HEADER) into a shared object, which becomes the "CUBIN" (with a small
 * header) that the fake driver (fake_cuda.c) loads. Compiler errors come back as the program log.
 * Environment: QMOE_EMU_HEADER (absolute path of emu.h, required), QMOE_EMU_CXX (default c++). */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef int nvrtcResult;
enum { OK = 0, E_OUT_OF_MEMORY = 1, E_INVALID_INPUT = 3, E_INVALID_PROGRAM = 4, E_INVALID_OPTION = 5,
       E_COMPILATION = 6, E_INTERNAL = 11 };

typedef struct {
  char *src, *name, *log;
  unsigned char *bin;
  size_t bin_size;
} prog;

nvrtcResult nvrtcVersion(int *major, int *minor) {
  *major = 99; /* not a real NVRTC: keeps emulated CUBINs apart from real ones in any shared cache */
  *minor = 0;
  return OK;
}

const char *nvrtcGetErrorString(nvrtcResult r) {
  switch (r) {
  case OK: return "NVRTC_SUCCESS";
  case E_COMPILATION: return "NVRTC_ERROR_COMPILATION";
  case E_INVALID_OPTION: return "NVRTC_ERROR_INVALID_OPTION";
  case E_INVALID_INPUT: return "NVRTC_ERROR_INVALID_INPUT";
  default: return "NVRTC_ERROR_INTERNAL_ERROR (emulated)";
  }
}

nvrtcResult nvrtcGetNumSupportedArchs(int *n) {
  *n = 1;
  return OK;
}
nvrtcResult nvrtcGetSupportedArchs(int *a) {
  a[0] = 90;
  return OK;
}

nvrtcResult nvrtcCreateProgram(prog **out, const char *src, const char *name, int nh, const char *const *h,
                               const char *const *hn) {
  (void)nh, (void)h, (void)hn;
  if (!src) return E_INVALID_INPUT;
  prog *p = calloc(1, sizeof *p);
  if (!p) return E_OUT_OF_MEMORY;
  p->src = strdup(src);
  p->name = strdup(name ? name : "kernel.cu");
  *out = p;
  return OK;
}

nvrtcResult nvrtcDestroyProgram(prog **pp) {
  if (!pp || !*pp) return E_INVALID_PROGRAM;
  prog *p = *pp;
  free(p->src);
  free(p->name);
  free(p->log);
  free(p->bin);
  free(p);
  *pp = NULL;
  return OK;
}

static char *slurp(const char *path, size_t *n) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  fseek(f, 0, SEEK_END);
  long len = ftell(f);
  fseek(f, 0, SEEK_SET);
  char *s = malloc((size_t)len + 1);
  if (s && fread(s, 1, (size_t)len, f) != (size_t)len) {
    free(s);
    s = NULL;
  }
  fclose(f);
  if (s) s[len] = 0;
  if (n) *n = (size_t)len;
  return s;
}

nvrtcResult nvrtcCompileProgram(prog *p, int n, const char *const *opts) {
  const char *hdr = getenv("QMOE_EMU_HEADER");
  const char *cxx = getenv("QMOE_EMU_CXX");
  if (!cxx || !cxx[0]) cxx = "c++";
  free(p->log);
  p->log = NULL;
  if (!hdr || !hdr[0]) {
    p->log = strdup("fake NVRTC: QMOE_EMU_HEADER (path of tests/cuda-emu/emu.h) is not set\n");
    return E_COMPILATION;
  }
  int arch_ok = 0;
  char defs[1024] = "";
  for (int i = 0; i < n; i++) {
    if (!strcmp(opts[i], "--gpu-architecture=sm_90")) arch_ok = 1;
    else if (!strncmp(opts[i], "--gpu-architecture=", 19)) {
      p->log = strdup("fake NVRTC: only sm_90 is emulated\n");
      return E_INVALID_OPTION;
    } else if (!strncmp(opts[i], "-D", 2) && strlen(defs) + strlen(opts[i]) + 4 < sizeof defs) {
      strcat(defs, " '");
      strcat(defs, opts[i]);
      strcat(defs, "'");
    }
  }
  if (!arch_ok) {
    p->log = strdup("fake NVRTC: no --gpu-architecture=sm_90\n");
    return E_INVALID_OPTION;
  }
  char dir[] = "/tmp/qmoe-emu-nvrtc-XXXXXX";
  if (!mkdtemp(dir)) return E_INTERNAL;
  char src[256], so[256], log[256], cmd[2048];
  snprintf(src, sizeof src, "%s/k.cu", dir);
  snprintf(so, sizeof so, "%s/k.so", dir);
  snprintf(log, sizeof log, "%s/log", dir);
  FILE *f = fopen(src, "wb");
  if (!f) return E_INTERNAL;
  fputs(p->src, f);
  fclose(f);
  snprintf(cmd, sizeof cmd,
           "%s -std=c++17 -O2 -g -fPIC -shared -ffp-contract=off -fno-fast-math -U_FORTIFY_SOURCE -D_FORTIFY_SOURCE=0 -Wall -Wno-unknown-pragmas "
           "-Wno-unused-function -Wno-unused-variable -Wno-unused-but-set-variable -include '%s'%s -x c++ '%s' -o '%s' >'%s' 2>&1",
           cxx, hdr, defs, src, so, log);
  int rc = system(cmd);
  size_t ln = 0;
  char *text = slurp(log, &ln);
  p->log = text ? text : strdup("");
  nvrtcResult r = OK;
  if (rc != 0) {
    r = E_COMPILATION;
  } else {
    size_t sz;
    char *bytes = slurp(so, &sz);
    if (!bytes) {
      r = E_INTERNAL;
    } else {
      free(p->bin);
      p->bin_size = sz + 16;
      p->bin = malloc(p->bin_size);
      uint64_t s64 = sz;
      memcpy(p->bin, "QMOEEMU1", 8);
      memcpy(p->bin + 8, &s64, 8);
      memcpy(p->bin + 16, bytes, sz);
      free(bytes);
    }
  }
  unlink(src);
  unlink(so);
  unlink(log);
  rmdir(dir);
  return r;
}

nvrtcResult nvrtcGetProgramLogSize(prog *p, size_t *n) {
  *n = (p->log ? strlen(p->log) : 0) + 1;
  return OK;
}
nvrtcResult nvrtcGetProgramLog(prog *p, char *out) {
  strcpy(out, p->log ? p->log : "");
  return OK;
}
nvrtcResult nvrtcGetCUBINSize(prog *p, size_t *n) {
  *n = p->bin ? p->bin_size : 0;
  return OK;
}
nvrtcResult nvrtcGetCUBIN(prog *p, char *out) {
  if (!p->bin) return E_INVALID_PROGRAM;
  memcpy(out, p->bin, p->bin_size);
  return OK;
}
