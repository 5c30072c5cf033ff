/* qmoe-gen: prints one generated kernel variant — its CUDA source, GLSL source, SPIR-V module, or its qtype's C
 * codec — or lists every variant, from the tables the build embeds in libqmoe (qmoe_embedded_cuda[],
 * qmoe_embedded_spirv[], the stage table and the qtype table), so what it prints is what the runtime runs. */
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <shaderc/shaderc.h>
#include "backend.h"
#include "cuda_internal.h" /* qmoe_embedded, qmoe_embedded_cuda[] */
#include "qmoe.h"
#include "stage_table.h"

/* Written by codegen/embed.lua from the .spv files in build/spv (the compiled generated/glsl shaders). */
extern const qmoe_embedded qmoe_embedded_spirv[];
extern const size_t qmoe_embedded_spirv_count;

static const char *const USAGE =
    "usage: qmoe-gen [--stage NAME] [--qtype NAME] [--acc f32|f64|q8] [--target cuda|glsl|spirv|c] [--pass NAME]\n"
    "                [--compile] [-o FILE]\n"
    "       qmoe-gen --list\n"
    "Prints one kernel variant of a stage (default matvec) as the build generated it:\n"
    "  --target cuda   the CUDA source NVRTC compiles (default)\n"
    "  --target glsl   the GLSL compute shader(s) (generated/glsl/, read from the source tree)\n"
    "  --target spirv  the SPIR-V module libqmoe embeds (binary: needs -o FILE or a pipe); with --compile,\n"
    "                  compiled now from the GLSL by libshaderc (Vulkan 1.2, optimized, like the build's glslc)\n"
    "  --target c      the qtype's generated C codec (generated/c/quant_<qtype>.c)\n"
    "  --pass NAME     one shader of a multi-pass Vulkan variant (e.g. argmax: part, final)\n"
    "  --list          every variant: stage, qtype, accumulator and the targets that exist\n"
    "Names: qtypes as in the contracts or GGUF (q6_k, q6k, Q6_K); accumulators f32/fp32, f64/fp64, q8\n"
    "(8-bit activations: matvec, moe_gate_up_swiglu and moe_down of integer block formats; docs/q8.md).\n"
    "The source tree is found from QMOE_SOURCE_DIR, else above this program, else the current directory.\n";

static int usage_error(const char *fmt, const char *arg) {
  fprintf(stderr, "qmoe-gen: ");
  fprintf(stderr, fmt, arg);
  fprintf(stderr, "\n%s", USAGE);
  return 2;
}

static int streq_ci(const char *a, const char *b) {
  for (; *a && *b; a++, b++)
    if (tolower((unsigned char)*a) != tolower((unsigned char)*b)) return 0;
  return *a == *b;
}

static const char *acc_str(qmoe_acc a) { return qmoe_acc_name(a); }

/* ---- the source tree (for GLSL and C sources, which libqmoe does not embed as text) ------------------- */

static int is_source_dir(const char *dir) {
  char p[PATH_MAX];
  if (snprintf(p, sizeof p, "%s/generated/c/qtypes.c", dir) >= (int)sizeof p) return 0; /* a path too long is not it */
  return access(p, R_OK) == 0;
}

static const char *source_dir(void) {
  static char dir[PATH_MAX];
  const char *e = getenv("QMOE_SOURCE_DIR");
  if (e && e[0]) return e;
  ssize_t n = readlink("/proc/self/exe", dir, sizeof dir - 1);
  if (n > 0) {
    dir[n] = 0;
    for (char *slash; (slash = strrchr(dir, '/')) != NULL && slash != dir;) {
      *slash = 0;
      if (is_source_dir(dir)) return dir;
    }
  }
  return ".";
}

static char *read_file(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  size_t cap = 1 << 16, n = 0;
  char *buf = malloc(cap);
  for (size_t r; buf && (r = fread(buf + n, 1, cap - n, f)) > 0;) {
    n += r;
    if (n == cap) buf = realloc(buf, cap *= 2);
  }
  fclose(f);
  if (!buf) {
    fprintf(stderr, "qmoe-gen: out of memory\n");
    exit(1);
  }
  *len = n;
  return buf;
}

/* ---- variants --------------------------------------------------------------------------------------- */

static const qmoe_embedded *find_cuda(const char *stem) {
  for (size_t i = 0; i < qmoe_embedded_cuda_count; i++)
    if (!strcmp(qmoe_embedded_cuda[i].name, stem)) return &qmoe_embedded_cuda[i];
  return NULL;
}

/* SPIR-V modules of a variant: named STEM or STEM.<pass>. */
static int spirv_modules(const char *stem, const qmoe_embedded **out, int max) {
  int n = 0;
  size_t len = strlen(stem);
  for (size_t i = 0; i < qmoe_embedded_spirv_count; i++) {
    const char *name = qmoe_embedded_spirv[i].name;
    if (!strncmp(name, stem, len) && (name[len] == 0 || name[len] == '.')) {
      if (n < max) out[n] = &qmoe_embedded_spirv[i];
      n++;
    }
  }
  return n;
}

static void make_stem(char *buf, size_t n, const qmoe_stage_info *si, const qmoe_qtype_info *q, int acc) {
  int len = snprintf(buf, n, "%s", si->name);
  if (si->varies_by_qtype && q) len += snprintf(buf + len, n - (size_t)len, "__%s", q->name);
  if (si->varies_by_acc && acc >= 0) snprintf(buf + len, n - (size_t)len, "__%s", acc_str((qmoe_acc)acc));
}

static int list_variants(void) {
  printf("%-20s %-6s %-4s %s\n", "stage", "qtype", "acc", "targets");
  /* The generated variant list (codegen/lib/variants.lua via stage_table.c), the one every generator and
   * test uses. */
  for (size_t i = 0; i < qmoe_variant_count; i++) {
    const qmoe_variant *v = &qmoe_variants[i];
    const qmoe_stage_info *si = qmoe_stage_info_get(v->stage);
    const qmoe_qtype_info *q = v->qtype >= 0 ? qmoe_qtype_by_id(v->qtype) : NULL;
    char targets[64] = "";
    const qmoe_embedded *mods[8];
    int nspv = spirv_modules(v->stem, mods, 8);
    if (q && q->dequant_row) strcat(targets, "c ");
    if (find_cuda(v->stem)) strcat(targets, "cuda ");
    if (nspv) strcat(targets, "glsl spirv ");
    if (targets[0]) targets[strlen(targets) - 1] = 0;
    printf("%-20s %-6s %-4s %s", si ? si->name : "?", q ? q->name : "-", v->acc >= 0 ? acc_str((qmoe_acc)v->acc) : "-",
           targets[0] ? targets : "(none)");
    if (nspv > 1) {
      printf(" (passes:");
      for (int m = 0; m < nspv && m < 8; m++) printf(" %s", strrchr(mods[m]->name, '.') + 1);
      printf(")");
    }
    printf("\n");
  }
  printf("%zu variants\n", qmoe_variant_count);
  return 0;
}

/* ---- output ----------------------------------------------------------------------------------------- */

static int emit(const char *out_path, const void *data, size_t n, int binary) {
  if (!out_path) {
    if (binary && isatty(STDOUT_FILENO)) {
      fprintf(stderr, "qmoe-gen: refusing to write a binary SPIR-V module to a terminal; use -o FILE or a pipe\n");
      return 1;
    }
    if (fwrite(data, 1, n, stdout) != n || fflush(stdout) != 0) {
      fprintf(stderr, "qmoe-gen: writing to stdout: %s\n", strerror(errno));
      return 1;
    }
    return 0;
  }
  FILE *f = fopen(out_path, "wb");
  if (!f) {
    fprintf(stderr, "qmoe-gen: cannot write %s: %s\n", out_path, strerror(errno));
    return 1;
  }
  int ok = fwrite(data, 1, n, f) == n;
  ok = (fclose(f) == 0) && ok;
  if (!ok) {
    fprintf(stderr, "qmoe-gen: writing %s failed: %s\n", out_path, strerror(errno));
    return 1;
  }
  return 0;
}

static int compile_glsl(const char *path, const char *src, size_t len, const char *out_path) {
  shaderc_compiler_t comp = shaderc_compiler_initialize();
  shaderc_compile_options_t opt = shaderc_compile_options_initialize();
  if (!comp || !opt) {
    fprintf(stderr, "qmoe-gen: libshaderc failed to initialize\n");
    return 1;
  }
  shaderc_compile_options_set_target_env(opt, shaderc_target_env_vulkan, shaderc_env_version_vulkan_1_2);
  shaderc_compile_options_set_optimization_level(opt, shaderc_optimization_level_performance);
  shaderc_compilation_result_t r =
      shaderc_compile_into_spv(comp, src, len, shaderc_compute_shader, path, "main", opt);
  int rc = 0;
  if (shaderc_result_get_compilation_status(r) != shaderc_compilation_status_success) {
    fprintf(stderr, "qmoe-gen: libshaderc could not compile %s:\n%s", path, shaderc_result_get_error_message(r));
    rc = 1;
  } else {
    rc = emit(out_path, shaderc_result_get_bytes(r), shaderc_result_get_length(r), 1);
  }
  shaderc_result_release(r);
  shaderc_compile_options_release(opt);
  shaderc_compiler_release(comp);
  return rc;
}

/* ---- main ------------------------------------------------------------------------------------------- */

int main(int argc, char **argv) {
  const char *stage = NULL, *qtype = NULL, *acc = NULL, *target = "cuda", *pass = NULL, *out = NULL;
  int list = 0, compile = 0;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
      fputs(USAGE, stdout);
      return 0;
    }
    if (!strcmp(a, "--list")) { list = 1; continue; }
    if (!strcmp(a, "--compile")) { compile = 1; continue; }
    const char *names[] = { "--stage", "--qtype", "--acc", "--target", "--pass", "-o" };
    const char **slots[] = { &stage, &qtype, &acc, &target, &pass, &out };
    int matched = 0;
    for (int k = 0; k < 6 && !matched; k++) {
      size_t len = strlen(names[k]);
      if (!strcmp(a, names[k])) {
        if (i + 1 >= argc) return usage_error("%s needs a value", a);
        *slots[k] = argv[++i];
        matched = 1;
      } else if (!strncmp(a, names[k], len) && a[len] == '=') {
        *slots[k] = a + len + 1;
        matched = 1;
      }
    }
    if (!matched) return usage_error("unknown argument '%s'", a);
  }
  if (list) return list_variants();

  const char *targets[] = { "cuda", "glsl", "spirv", "c" };
  int t = -1;
  for (int k = 0; k < 4; k++)
    if (streq_ci(target, targets[k])) t = k;
  if (t < 0) return usage_error("unknown --target '%s' (valid: cuda, glsl, spirv, c)", target);
  if (compile && t != 2) return usage_error("%s", "--compile applies to --target spirv only");

  const qmoe_qtype_info *q = NULL;
  if (qtype) {
    q = qmoe_qtype_by_name(qtype);
    if (!q) {
      fprintf(stderr, "qmoe-gen: unknown qtype '%s' (valid:", qtype);
      for (size_t i = 0; i < qmoe_qtype_count(); i++) fprintf(stderr, " %s", qmoe_qtype_at(i)->name);
      fprintf(stderr, "; case and the '_' are optional)\n");
      return 2;
    }
  }
  int accv = -1;
  if (acc) {
    if (streq_ci(acc, "f32") || streq_ci(acc, "fp32")) accv = QMOE_ACC_F32;
    else if (streq_ci(acc, "f64") || streq_ci(acc, "fp64")) accv = QMOE_ACC_F64;
    else if (streq_ci(acc, "q8")) accv = QMOE_ACC_Q8;
    else return usage_error("unknown --acc '%s' (valid: f32, fp32, f64, fp64, q8)", acc);
  }

  if (t == 3) { /* the qtype's C codec: one file per qtype, whatever the stage */
    if (!q) return usage_error("%s", "--target c needs --qtype (it prints the qtype's generated C codec)");
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/generated/c/quant_%s.c", source_dir(), q->name);
    size_t n;
    char *src = read_file(path, &n);
    if (!src) {
      fprintf(stderr, "qmoe-gen: cannot read %s (%s); set QMOE_SOURCE_DIR to the qmoe source tree\n", path,
              strerror(errno));
      return 1;
    }
    int rc = emit(out, src, n, 0);
    free(src);
    return rc;
  }

  if (!stage) {
    if (!q) return usage_error("%s", "give --stage NAME and/or --qtype NAME (or --list)");
    stage = "matvec";
  }
  const qmoe_stage_info *si = qmoe_stage_by_name(stage);
  if (!si) {
    fprintf(stderr, "qmoe-gen: unknown stage '%s' (valid:", stage);
    for (int s = 0; s < QMOE_STAGE_TABLE_COUNT; s++) fprintf(stderr, " %s", qmoe_stage_info_get((qmoe_stage)s)->name);
    fprintf(stderr, ")\n");
    return 2;
  }
  if (si->varies_by_qtype && !q) {
    fprintf(stderr, "qmoe-gen: stage %s varies by qtype: give --qtype (one of:", si->name);
    for (int i = 0; i < si->n_qtypes; i++) fprintf(stderr, " %s", qmoe_qtype_by_id(si->qtypes[i])->name);
    fprintf(stderr, ")\n");
    return 2;
  }
  if (!si->varies_by_qtype && q) {
    fprintf(stderr, "qmoe-gen: stage %s does not vary by qtype; leave out --qtype\n", si->name);
    return 2;
  }
  if (q && !qmoe_stage_has_qtype(si, q->ggml_type)) {
    fprintf(stderr, "qmoe-gen: stage %s has no %s variant (contracts/stages/%s.yaml lists its qtypes)\n", si->name,
            q->name, si->name);
    return 2;
  }
  if (si->varies_by_acc && accv < 0) {
    fprintf(stderr, "qmoe-gen: stage %s varies by accumulator: give --acc f32 or --acc f64\n", si->name);
    return 2;
  }
  if (accv >= 0 && !qmoe_stage_has_acc(si, q ? q->ggml_type : -1, accv)) {
    fprintf(stderr, "qmoe-gen: stage %s has no %s variant%s%s (docs/q8.md: q8 is for the row stages of integer "
            "block formats)\n", si->name, acc_str((qmoe_acc)accv), q ? " for qtype " : "", q ? q->name : "");
    return 2;
  }
  if (!si->varies_by_acc && accv >= 0) {
    fprintf(stderr, "qmoe-gen: stage %s does not vary by accumulator; leave out --acc\n", si->name);
    return 2;
  }
  char stem[128];
  make_stem(stem, sizeof stem, si, q, accv);

  if (t == 0) {
    const qmoe_embedded *e = find_cuda(stem);
    if (!e) {
      fprintf(stderr, "qmoe-gen: libqmoe embeds no CUDA kernel %s (a stage contract lists it, but %s has no qtype "
                      "accumulator %s?)\n",
              stem, q ? q->name : si->name, accv >= 0 ? acc_str((qmoe_acc)accv) : "-");
      return 1;
    }
    return emit(out, e->data, e->size, 0);
  }

  const qmoe_embedded *mods[16];
  int nm = spirv_modules(stem, mods, 16);
  if (nm == 0) {
    fprintf(stderr, "qmoe-gen: libqmoe embeds no SPIR-V module for %s\n", stem);
    return 1;
  }
  if (nm > 16) nm = 16;
  int chosen = -1;
  if (pass) {
    for (int m = 0; m < nm; m++) {
      const char *dot = strrchr(mods[m]->name, '.');
      if (dot && !strcmp(dot + 1, pass)) chosen = m;
    }
    if (chosen < 0) {
      fprintf(stderr, "qmoe-gen: %s has no pass '%s' (passes:", stem, pass);
      for (int m = 0; m < nm; m++) fprintf(stderr, " %s", strchr(mods[m]->name, '.') ? strrchr(mods[m]->name, '.') + 1 : "(single)");
      fprintf(stderr, ")\n");
      return 2;
    }
  } else if (nm == 1) {
    chosen = 0;
  }
  if (t == 2 && chosen < 0) {
    fprintf(stderr, "qmoe-gen: %s has %d SPIR-V modules; choose one with --pass (", stem, nm);
    for (int m = 0; m < nm; m++) fprintf(stderr, "%s%s", m ? ", " : "", strrchr(mods[m]->name, '.') + 1);
    fprintf(stderr, ")\n");
    return 2;
  }
  if (t == 2 && !compile) return emit(out, mods[chosen]->data, mods[chosen]->size, 1);

  /* GLSL text (or its fresh compilation): generated/glsl/<module>.comp from the source tree. */
  FILE *o = NULL;
  int rc = 0;
  if (t == 1 && out && !(o = fopen(out, "wb"))) {
    fprintf(stderr, "qmoe-gen: cannot write %s: %s\n", out, strerror(errno));
    return 1;
  }
  for (int m = 0; m < nm && rc == 0; m++) {
    if (chosen >= 0 && m != chosen) continue;
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/generated/glsl/%s.comp", source_dir(), mods[m]->name);
    size_t n;
    char *src = read_file(path, &n);
    if (!src) {
      fprintf(stderr, "qmoe-gen: cannot read %s (%s); set QMOE_SOURCE_DIR to the qmoe source tree\n", path,
              strerror(errno));
      rc = 1;
      break;
    }
    if (t == 2) {
      rc = compile_glsl(path, src, n, out);
    } else {
      FILE *dst = o ? o : stdout;
      if (chosen < 0) fprintf(dst, "// ==== generated/glsl/%s.comp ====\n", mods[m]->name);
      if (fwrite(src, 1, n, dst) != n) rc = 1;
    }
    free(src);
  }
  if (o && fclose(o) != 0) rc = 1;
  if (!o && fflush(stdout) != 0) rc = 1;
  return rc;
}
