/* pv_run.c: one validation run — finds the contract files under the given paths and their kinds, loads
 * reference-only contracts from the contract roots, runs the checks in order, and prints the report. */
#include "pv.h"
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

enum { WALK_MAX_DEPTH = 16 };

typedef struct { char **v; size_t n, cap; } strvec;

static void sv_push(strvec *s, char *x) {
  if (s->n == s->cap) {
    s->cap = s->cap ? 2 * s->cap : 16;
    s->v = xrealloc(s->v, s->cap * sizeof *s->v);
  }
  s->v[s->n++] = x;
}

static void sv_free(strvec *s) {
  for (size_t i = 0; i < s->n; i++) free(s->v[i]);
  free(s->v);
  memset(s, 0, sizeof *s);
}

static int cmp_cstr(const void *a, const void *b) { return strcmp(*(const char *const *)a, *(const char *const *)b); }

static int sv_has_sorted(const strvec *s, const char *x) {
  return s->n && bsearch(&x, s->v, s->n, sizeof *s->v, cmp_cstr) != NULL;
}

static char *join(const char *dir, const char *name) {
  size_t n = strlen(dir);
  while (n > 1 && dir[n - 1] == '/') n--;
  if (n == 1 && dir[0] == '.') return xstrdup(name);
  return xasprintf("%.*s/%s", (int)n, dir, name);
}

static int is_yaml_name(const char *name) {
  size_t n = strlen(name);
  return (n > 5 && !strcmp(name + n - 5, ".yaml")) || (n > 4 && !strcmp(name + n - 4, ".yml"));
}

static pv_kind kind_of_name(const char *s, size_t n) {
  if (n == 5 && !memcmp(s, "quant", 5)) return PV_KIND_QUANT;
  if (n == 6 && !memcmp(s, "stages", 6)) return PV_KIND_STAGE;
  if (n == 6 && !memcmp(s, "models", 6)) return PV_KIND_MODEL;
  if (n == 7 && !memcmp(s, "recipes", 7)) return PV_KIND_RECIPE;
  return PV_KIND_NONE;
}

static const char *kind_dir(pv_kind k) {
  return k == PV_KIND_QUANT ? "quant" : k == PV_KIND_STAGE ? "stages" : k == PV_KIND_MODEL ? "models"
       : k == PV_KIND_RECIPE ? "recipes" : "?";
}

/* The kind named by the last quant/stages/models component of PATH's directories (the last component
 * too when IS_DIR); *ROOT gets the path before it ("." when empty), the contract root. */
static pv_kind kind_from_components(const char *path, int is_dir, char **root) {
  size_t len = strlen(path);
  while (len > 1 && path[len - 1] == '/') len--;
  size_t end = len;
  if (!is_dir) { /* drop the file name */
    while (end > 0 && path[end - 1] != '/') end--;
  }
  pv_kind found = PV_KIND_NONE;
  size_t i = 0;
  while (i < end) {
    size_t j = i;
    while (j < end && path[j] != '/') j++;
    pv_kind k = kind_of_name(path + i, j - i);
    if (k != PV_KIND_NONE) {
      found = k;
      if (root) {
        size_t r = i;
        while (r > 0 && path[r - 1] == '/') r--;
        free(*root);
        *root = r ? xstrndup(path, r) : xstrdup(i > 0 ? "/" : ".");
      }
    }
    i = j + 1;
  }
  return found;
}

/* For a file given with no kind directory in its path: the real name of its parent directory. */
static pv_kind kind_from_realpath(const char *path, char **root) {
  char *dir = xstrdup(path);
  char *slash = strrchr(dir, '/');
  if (!slash) {
    free(dir);
    dir = xstrdup(".");
  } else if (slash == dir) {
    slash[1] = 0;
  } else {
    *slash = 0;
  }
  char *real = realpath(dir, NULL);
  free(dir);
  if (!real) return PV_KIND_NONE;
  char *base = strrchr(real, '/');
  base = base ? base + 1 : real;
  pv_kind k = kind_of_name(base, strlen(base));
  if (k != PV_KIND_NONE && root) {
    free(*root);
    *root = xasprintf("%s/..", real);
  }
  free(real);
  return k;
}

/* ---- Collecting files ----------------------------------------------------------------------------- */

typedef struct {
  pv_set set;
  pv_result *res;
  strvec given_real;  /* realpaths of given files, sorted after collection */
  strvec roots;       /* contract roots for reference-only loading, as written (messages name them) */
  strvec roots_real;  /* their realpaths, to load each root once */
} run;

static pv_file *add_file(run *r, const char *path, pv_kind kind, int given) {
  pv_file *f = xcalloc(1, sizeof *f);
  f->path = xstrdup(path);
  f->real = realpath(path, NULL);
  if (!f->real) f->real = xstrdup(path);
  const char *base = strrchr(path, '/');
  base = base ? base + 1 : path;
  const char *dot = strrchr(base, '.');
  f->stem = dot && dot != base ? xstrndup(base, (size_t)(dot - base)) : xstrdup(base);
  f->kind = kind;
  f->given = given;
  if (r->set.n == r->set.cap) {
    r->set.cap = r->set.cap ? 2 * r->set.cap : 32;
    r->set.files = xrealloc(r->set.files, r->set.cap * sizeof *r->set.files);
  }
  r->set.files[r->set.n++] = f;
  return f;
}

static void io_error(run *r, const char *path, const char *code, const char *fmt, const char *detail) {
  diag_add(&r->res->diag, DIAG_ERROR, path, 0, 0, code, fmt, detail);
  r->res->io_error = 1;
}

/* Collects the YAML files under DIR (sorted, hidden entries skipped) into OUT. */
static int walk_dir(run *r, const char *dir, int depth, strvec *out, int report) {
  if (depth > WALK_MAX_DEPTH) {
    if (report) io_error(r, dir, "P001", "directories nested deeper than %s levels (a symlink loop?)", "16");
    return -1;
  }
  DIR *d = opendir(dir);
  if (!d) {
    if (report) io_error(r, dir, "P001", "cannot read the directory: %s", strerror(errno));
    return -1;
  }
  strvec names = { 0 };
  struct dirent *e;
  while ((e = readdir(d)) != NULL)
    if (e->d_name[0] != '.') sv_push(&names, xstrdup(e->d_name));
  closedir(d);
  if (names.n) qsort(names.v, names.n, sizeof *names.v, cmp_cstr);
  for (size_t i = 0; i < names.n; i++) {
    char *p = join(dir, names.v[i]);
    struct stat st;
    if (stat(p, &st) != 0) {
      if (report) io_error(r, p, "P001", "cannot read: %s", strerror(errno));
      free(p);
    } else if (S_ISDIR(st.st_mode)) {
      walk_dir(r, p, depth + 1, out, report);
      free(p);
    } else if (S_ISREG(st.st_mode) && is_yaml_name(names.v[i])) {
      sv_push(out, p);
    } else {
      free(p);
    }
  }
  sv_free(&names);
  return 0;
}

static void add_root(run *r, const char *root) {
  char *real = realpath(root, NULL);
  if (!real) return;
  for (size_t i = 0; i < r->roots_real.n; i++)
    if (!strcmp(r->roots_real.v[i], real)) {
      free(real);
      return;
    }
  sv_push(&r->roots_real, real);
  sv_push(&r->roots, xstrdup(root));
}

static void collect_given(run *r, const char *const *paths, size_t npaths, const pv_options *opt) {
  for (size_t i = 0; i < npaths; i++) {
    const char *p = paths[i];
    struct stat st;
    if (stat(p, &st) != 0) {
      io_error(r, p, "P001", "cannot read: %s", strerror(errno));
      continue;
    }
    char *root = NULL;
    if (S_ISDIR(st.st_mode)) {
      strvec files = { 0 };
      if (walk_dir(r, p, 0, &files, 1) == 0 && files.n == 0)
        io_error(r, p, "P002", "no contract files (*.yaml, *.yml) in this directory%s", "");
      for (size_t k = 0; k < files.n; k++) {
        pv_kind kind = kind_from_components(files.v[k], 0, NULL);
        char *real = realpath(files.v[k], NULL);
        int dup = 0;
        for (size_t j = 0; real && !dup && j < r->given_real.n; j++) dup = !strcmp(r->given_real.v[j], real);
        if (!dup) {
          add_file(r, files.v[k], kind, 1);
          if (real) sv_push(&r->given_real, xstrdup(real));
        }
        free(real);
      }
      sv_free(&files);
      if (kind_from_components(p, 1, &root) != PV_KIND_NONE && !opt->refs && !opt->no_refs) add_root(r, root);
    } else if (S_ISREG(st.st_mode)) {
      pv_kind kind = kind_from_components(p, 0, &root);
      if (kind == PV_KIND_NONE) kind = kind_from_realpath(p, &root);
      char *real = realpath(p, NULL);
      int dup = 0;
      for (size_t j = 0; real && j < r->given_real.n; j++) dup = dup || !strcmp(r->given_real.v[j], real);
      if (!dup) {
        pv_file *f = add_file(r, p, kind, 1);
        f->skip = kind == PV_KIND_NONE;
        if (kind == PV_KIND_NONE)
          diag_add(&r->res->diag, DIAG_ERROR, p, 0, 0, "P003",
                   "cannot tell what kind of contract this is: its directory is not quant/, stages/, models/ or recipes/; "
                   "move it into one of them (e.g. contracts/quant/)");
        if (real) sv_push(&r->given_real, xstrdup(real));
      }
      free(real);
      if (kind != PV_KIND_NONE && root && !opt->refs && !opt->no_refs) add_root(r, root);
    } else {
      io_error(r, p, "P001", "cannot read: %s", "not a regular file or a directory");
    }
    free(root);
  }
  if (r->given_real.n) qsort(r->given_real.v, r->given_real.n, sizeof *r->given_real.v, cmp_cstr);
}

static void collect_refs(run *r, const pv_options *opt) {
  if (opt->no_refs) return;
  if (opt->refs) {
    struct stat st;
    if (stat(opt->refs, &st) != 0) {
      io_error(r, opt->refs, "P001", "--refs: cannot read the directory: %s", strerror(errno));
      return;
    }
    if (!S_ISDIR(st.st_mode)) {
      io_error(r, opt->refs, "P001", "--refs: %s", "not a directory");
      return;
    }
    add_root(r, opt->refs);
  }
  strvec seen = { 0 };
  for (size_t i = 0; i < r->roots.n; i++) {
    for (pv_kind k = PV_KIND_QUANT; k <= PV_KIND_RECIPE; k++) {
      char *dir = join(r->roots.v[i], kind_dir(k));
      struct stat st;
      if (stat(dir, &st) == 0 && S_ISDIR(st.st_mode)) {
        strvec files = { 0 };
        walk_dir(r, dir, 0, &files, 0);
        for (size_t j = 0; j < files.n; j++) {
          char *real = realpath(files.v[j], NULL);
          int dup = real && sv_has_sorted(&r->given_real, real);
          for (size_t m = 0; real && !dup && m < seen.n; m++) dup = !strcmp(seen.v[m], real);
          if (real && !dup) {
            add_file(r, files.v[j], k, 0);
            sv_push(&seen, xstrdup(real));
          }
          free(real);
        }
        sv_free(&files);
      }
      free(dir);
    }
  }
  sv_free(&seen);
}

/* ---- Loading one file ----------------------------------------------------------------------------- */

static diag_list *diag_for(pv_set *set, const pv_file *f) { return f->given ? set->diag : &set->scratch; }

/* Reads the whole file (bounded by yaml_tree's limit). Returns 0, or -1 after reporting. */
static int read_text(pv_set *set, pv_file *f, int *io) {
  FILE *fp = fopen(f->path, "rb");
  if (!fp) {
    diag_add(diag_for(set, f), DIAG_ERROR, f->path, 0, 0, "P001", "cannot read: %s", strerror(errno));
    *io = 1;
    return -1;
  }
  size_t cap = 65536, len = 0;
  char *buf = xmalloc(cap);
  for (;;) {
    if (len == cap) {
      cap *= 2;
      buf = xrealloc(buf, cap);
    }
    size_t got = fread(buf + len, 1, cap - len, fp);
    len += got;
    if (len > QY_MAX_FILE) {
      diag_add(diag_for(set, f), DIAG_ERROR, f->path, 0, 0, "P004",
               "the file is larger than %d MiB; a contract is a small text file", QY_MAX_FILE >> 20);
      fclose(fp);
      free(buf);
      return -1;
    }
    if (got == 0) break;
  }
  int err = ferror(fp);
  fclose(fp);
  if (err) {
    diag_add(diag_for(set, f), DIAG_ERROR, f->path, 0, 0, "P001", "cannot read: %s", "read error");
    *io = 1;
    free(buf);
    return -1;
  }
  f->text = buf;
  f->len = len;
  return 0;
}

static const pv_record *record_of(pv_kind k) {
  return k == PV_KIND_QUANT ? &pv_quant_record : k == PV_KIND_STAGE ? &pv_stage_record
       : k == PV_KIND_MODEL ? &pv_model_record : &pv_recipe_record;
}

static pv_kind kind_from_keys(const qy_node *root) {
  if (pv_get(root, "block_bytes") || pv_get(root, "ggml_type")) return PV_KIND_QUANT;
  if (pv_get(root, "trace") || pv_get(root, "varies_by")) return PV_KIND_STAGE;
  if (pv_get(root, "metadata") || pv_get(root, "falsification_tests")) return PV_KIND_MODEL;
  if (pv_get(root, "rules")) return PV_KIND_RECIPE;
  return PV_KIND_NONE;
}

/* Parses the text into the file's typed record and runs the per-file checks. */
static void load_parsed(pv_set *set, pv_file *f) {
  diag_list *d = diag_for(set, f);
  size_t before = d->n;
  qy_load_string(f->path, f->text, f->len, &f->root, d);
  /* Values yaml_tree replaced after reporting them must not be reported again as wrong types. */
  for (size_t i = before; i < d->n; i++) {
    if (strcmp(d->items[i].code, "Y004") && strcmp(d->items[i].code, "Y005")) continue;
    f->poison = xrealloc(f->poison, (f->npoison + 1) * sizeof *f->poison);
    f->poison[f->npoison].line = d->items[i].line;
    f->poison[f->npoison].col = d->items[i].col;
    f->npoison++;
  }
  if (!f->root) return;
  if (f->kind == PV_KIND_NONE) {
    f->kind = kind_from_keys(f->root);
    if (f->kind == PV_KIND_NONE) {
      diag_add(d, DIAG_ERROR, f->path, 0, 0, "P003",
               "cannot tell what kind of contract this is: it is not under quant/, stages/, models/ or recipes/ and its keys "
               "are not those of one; move it into the right directory");
      return;
    }
    diag_add(d, DIAG_WARNING, f->path, 0, 0, "W101",
             "not under quant/, stages/, models/ or recipes/; read as a %s contract from its keys; move it into %s/",
             f->kind == PV_KIND_QUANT ? "quant" : f->kind == PV_KIND_STAGE ? "stage" : f->kind == PV_KIND_MODEL ? "model" : "recipe",
             kind_dir(f->kind));
  }
  const pv_record *rec = record_of(f->kind);
  pv_walk_ctx c = { d, f->path, f->poison, f->npoison };
  pv_walk_record(&c, f->root, rec, &f->rec, NULL); /* reports a root that is not a mapping */
  if (f->root->kind != QY_MAP) return;
  f->loaded = 1;
  pv_check_file(set, f);
}

static void free_file(pv_file *f) {
  if (f->loaded) {
    const pv_record *rec = record_of(f->kind);
    pv_free_record(rec, &f->rec);
  }
  qy_free(f->root);
  free(f->poison);
  free(f->text);
  free(f->path);
  free(f->real);
  free(f->stem);
  free(f);
}

/* ---- The run -------------------------------------------------------------------------------------- */

/* Loads, checks per file, checks across files, then checks expressions of quant files that passed so far. */
static void check_set(pv_set *set, int *io, size_t *struct_errors) {
  for (size_t i = 0; i < set->n; i++) {
    pv_file *f = set->files[i];
    size_t e0 = diag_for(set, f)->errors;
    if (f->skip) {
      struct_errors[i] = 1;
      continue;
    }
    if (!f->text && read_text(set, f, f->given ? io : &(int){ 0 }) != 0) {
      struct_errors[i] = 1;
      continue;
    }
    load_parsed(set, f);
    struct_errors[i] = diag_for(set, f)->errors - e0;
  }
  pv_check_cross(set);
  pv_lua *lua = NULL;
  for (size_t i = 0; i < set->n; i++) {
    pv_file *f = set->files[i];
    if (!f->given || !f->loaded || (f->kind != PV_KIND_QUANT && f->kind != PV_KIND_RECIPE) || struct_errors[i]) continue;
    if (!lua) lua = pv_lua_open();
    if (f->kind == PV_KIND_QUANT) pv_lua_check_quant(lua, set, f);
    else pv_lua_check_recipe(lua, set, f);
  }
  if (lua) pv_lua_close(lua);
}

static int finish(pv_result *res) {
  diag_sort(&res->diag);
  if (res->io_error) return 2;
  return res->diag.errors ? 1 : 0;
}

int pv_validate(const char *const *paths, size_t npaths, const pv_options *opt, pv_result *res) {
  static const pv_options defaults = { 0 };
  if (!opt) opt = &defaults;
  run r = { .res = res };
  r.set.diag = &res->diag;
  collect_given(&r, paths, npaths, opt);
  size_t given = r.set.n;
  collect_refs(&r, opt);
  size_t *struct_errors = xcalloc(r.set.n ? r.set.n : 1, sizeof *struct_errors);
  int io = 0;
  check_set(&r.set, &io, struct_errors);
  if (io) res->io_error = 1;
  res->files = given;
  free(struct_errors);
  for (size_t i = 0; i < r.set.n; i++) free_file(r.set.files[i]);
  free(r.set.files);
  diag_free(&r.set.scratch);
  sv_free(&r.given_real);
  sv_free(&r.roots);
  sv_free(&r.roots_real);
  return finish(res);
}

int pv_validate_buffer(const char *name, pv_kind kind, const char *text, size_t len, pv_result *res) {
  run r = { .res = res };
  r.set.diag = &res->diag;
  pv_file *f = add_file(&r, name, kind, 1);
  f->text = xmalloc(len ? len : 1);
  memcpy(f->text, text, len);
  f->len = len;
  size_t struct_errors = 0;
  int io = 0;
  check_set(&r.set, &io, &struct_errors);
  res->files = 1;
  free_file(f);
  free(r.set.files);
  diag_free(&r.set.scratch);
  return finish(res);
}

void pv_result_free(pv_result *res) {
  diag_free(&res->diag);
  memset(res, 0, sizeof *res);
}

/* ---- Reports -------------------------------------------------------------------------------------- */

void pv_print_text(const pv_result *res, FILE *out) {
  diag_print_text(&res->diag, out);
  size_t total = res->diag.errors + res->diag.warnings;
  if (total > res->diag.n) fprintf(out, "... %zu more diagnostic(s) not shown\n", total - res->diag.n);
  fprintf(out, "%zu error(s), %zu warning(s)\n", res->diag.errors, res->diag.warnings);
  if (!res->diag.errors) fprintf(out, "Contracts are valid.\n");
}

/* A JSON string: escapes quotes, backslashes and control characters; bytes that are not UTF-8 become
 * U+FFFD so the output always parses. */
static void json_str(FILE *out, const char *s) {
  const unsigned char *p = (const unsigned char *)s;
  fputc('"', out);
  while (*p) {
    unsigned c = *p;
    if (c == '"' || c == '\\') {
      fputc('\\', out);
      fputc((int)c, out);
      p++;
    } else if (c < 0x20 || c == 0x7f) {
      fprintf(out, "\\u%04x", c);
      p++;
    } else if (c < 0x80) {
      fputc((int)c, out);
      p++;
    } else {
      int n = (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3 : (c & 0xF8) == 0xF0 ? 4 : 0;
      int ok = n > 0;
      for (int k = 1; ok && k < n; k++) ok = (p[k] & 0xC0) == 0x80;
      if (ok && n == 2 && c < 0xC2) ok = 0; /* overlong */
      if (ok) {
        fwrite(p, 1, (size_t)n, out);
        p += n;
      } else {
        fputs("\\ufffd", out);
        p++;
      }
    }
  }
  fputc('"', out);
}

void pv_print_json(const pv_result *res, FILE *out) {
  fprintf(out, "{\"valid\": %s, \"files\": %zu, \"errors\": %zu, \"warnings\": %zu, \"diagnostics\": [",
          res->diag.errors ? "false" : "true", res->files, res->diag.errors, res->diag.warnings);
  for (size_t i = 0; i < res->diag.n; i++) {
    const diag_entry *e = &res->diag.items[i];
    fputs(i ? ",\n  " : "\n  ", out);
    fputs("{\"file\": ", out);
    json_str(out, e->file);
    fprintf(out, ", \"line\": %d, \"col\": %d, \"severity\": \"%s\", \"code\": ", e->line, e->col,
            e->severity == DIAG_ERROR ? "error" : "warning");
    json_str(out, e->code);
    fputs(", \"message\": ", out);
    json_str(out, e->message);
    fputc('}', out);
  }
  fputs(res->diag.n ? "\n]}\n" : "]}\n", out);
}
