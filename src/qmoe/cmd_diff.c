/* cmd_diff.c: `qmoe diff A.gguf B.gguf`: compares two trace files (docs/diff.md) layer by layer and point
 * by point in forward order: cosine, NMSE, max-abs and a verdict; names the first divergent (layer, point). */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "cmd.h"
#include "diag.h"
#include "falsifiers.h"
#include "recipe.h"
#include "trace_points.h"

static const char usage[] =
  "usage: qmoe diff A.gguf B.gguf [--json] [--plot FILE.svg] [--threshold-from-contract | --cosine-min X]\n"
  "Compares two trace files (as `qmoe trace` writes them; format in docs/diff.md) tensor by tensor in forward\n"
  "order (layer-major; within a layer, the model contract's trace point order; unknown names last):\n"
  "  f32 points: cosine, NMSE = sum (a-b)^2 / sum a^2 (A is the reference), max |a-b|, the worst position;\n"
  "  i32 points (ffn_moe_topk): the expert-id SETS per position; every position where they differ is listed.\n"
  "Verdicts: Match, Diverge, NanA / NanB / NanBoth (non-finite values in A, B or both), Missing (a tensor in\n"
  "only one file). An f32 point matches when its cosine meets the contract's FALSIFY-LAYER-COSINE check\n"
  "(contracts/models/qwen3-moe-forward-v1.yaml, through generated/c/falsifiers.c): the default, or say so\n"
  "with --threshold-from-contract; --cosine-min X sets another bound. The first divergent (layer, point) is named.\n"
  "Different token lists, positions or shapes, or a malformed trace, are errors.\n"
  "  --json         the report as JSON on stdout (for tools)\n"
  "  --plot FILE    an SVG heat map, layers x points, of -log10(1 - cosine); divergent cells crossed\n"
  "exit status: 0 every point Match, 1 some point is not Match, 2 error\n"
  "example: qmoe diff cpu.trace.gguf vulkan.trace.gguf --plot diff.svg\n";

enum { V_MATCH, V_DIVERGE, V_NANA, V_NANB, V_NANBOTH, V_MISSING };
static const char *const verdict_name[] = { "Match", "Diverge", "NanA", "NanB", "NanBoth", "Missing" };

typedef struct {
  qmoe_gguf *f;
  const char *path;
  const char *source, *model; /* NUL-terminated copies */
  int64_t n_layers, n_tokens, n_pos;
  qmoe_gguf_value tokens, positions;
  int has_positions;
} trace;

typedef struct {
  char point[96];
  int group; /* 0 model points before the layers, 1 layer points, 2 model points after */
  int64_t layer; /* -1 for model points */
  int order;     /* index in the trace point table; QMOE_TP_COUNT for unknown names */
  const qmoe_gguf_tensor *ta, *tb;
  int verdict, is_ids;
  double cosine, nmse, max_abs;
  int64_t elements, nonfinite_a, nonfinite_b, worst_pos, diff_positions;
  double worst_cos;
} row;

typedef struct {
  int64_t layer, pos;
  int32_t *only_a, *only_b;
  int n_a, n_b;
} topk_diff;

static char *dup_str(const char *s, uint64_t n) {
  char *p = xmalloc((size_t)n + 1);
  memcpy(p, s, (size_t)n);
  p[n] = 0;
  return p;
}

static int i32_at(const qmoe_gguf_value *arr, uint64_t i, int64_t *out) {
  qmoe_gguf_value e;
  return qmoe_gguf_array_get(arr, i, &e) == 0 && qmoe_gguf_value_i64(&e, out) == 0 ? 0 : -1;
}

/* Opens and checks a trace file's metadata; on error writes why to err. */
static int open_trace(const char *path, trace *t, char *err, size_t cap) {
  memset(t, 0, sizeof *t);
  t->path = path;
  if (qmoe_gguf_open(path, &t->f) != 0) return snprintf(err, cap, "%s", qmoe_last_error()), -1;
  uint32_t version, n_layers;
  const char *s;
  uint64_t n;
  if (qmoe_gguf_get_u32(t->f, "qmoe.trace.version", &version) != 0)
    return snprintf(err, cap, "%s: not a trace file: %s", path, qmoe_last_error()), -1;
  if (version != 1) return snprintf(err, cap, "%s: qmoe.trace.version is %u; this qmoe reads version 1", path, version), -1;
  if (qmoe_gguf_get_str(t->f, "qmoe.trace.source", &s, &n) != 0) return snprintf(err, cap, "%s", qmoe_last_error()), -1;
  t->source = dup_str(s, n < 200 ? n : 200);
  if (qmoe_gguf_get_str(t->f, "qmoe.trace.model", &s, &n) != 0) return snprintf(err, cap, "%s", qmoe_last_error()), -1;
  t->model = dup_str(s, n < 400 ? n : 400);
  if (qmoe_gguf_get_u32(t->f, "qmoe.trace.n_layers", &n_layers) != 0) return snprintf(err, cap, "%s", qmoe_last_error()), -1;
  if (n_layers > 100000) return snprintf(err, cap, "%s: qmoe.trace.n_layers %u is not a layer count", path, n_layers), -1;
  t->n_layers = n_layers;
  if (qmoe_gguf_get_array(t->f, "qmoe.trace.tokens", QMOE_GGUF_I32, &t->tokens) != 0)
    return snprintf(err, cap, "%s", qmoe_last_error()), -1;
  if (t->tokens.count == 0) return snprintf(err, cap, "%s: qmoe.trace.tokens is empty", path), -1;
  t->n_tokens = (int64_t)t->tokens.count;
  t->n_pos = t->n_tokens;
  if (qmoe_gguf_find_key(t->f, "qmoe.trace.positions") >= 0) {
    if (qmoe_gguf_get_array(t->f, "qmoe.trace.positions", QMOE_GGUF_I32, &t->positions) != 0)
      return snprintf(err, cap, "%s", qmoe_last_error()), -1;
    if (t->positions.count == 0) return snprintf(err, cap, "%s: qmoe.trace.positions is empty", path), -1;
    int64_t prev = -1;
    for (uint64_t i = 0; i < t->positions.count; i++) {
      int64_t p;
      if (i32_at(&t->positions, i, &p) != 0 || p <= prev || p >= t->n_tokens)
        return snprintf(err, cap, "%s: qmoe.trace.positions[%llu] must be increasing and below the %lld tokens", path,
                        (unsigned long long)i, (long long)t->n_tokens), -1;
      prev = p;
    }
    t->has_positions = 1;
    t->n_pos = (int64_t)t->positions.count;
  }
  return 0;
}

static void close_trace(trace *t) {
  qmoe_gguf_close(t->f);
  free((void *)t->source);
  free((void *)t->model);
}

/* Splits a tensor name into (group, layer, order, point) and checks its shape and type. */
static int classify(const trace *t, const qmoe_gguf_tensor *x, row *r, char *err, size_t cap) {
  const char *rest = NULL;
  int64_t layer = cli_layer_of(x->name, &rest);
  const char *point = layer >= 0 ? rest : x->name;
  if (layer >= t->n_layers)
    return snprintf(err, cap, "%s: tensor '%s' is for layer %lld, but qmoe.trace.n_layers is %lld", t->path, x->name,
                    (long long)layer, (long long)t->n_layers), -1;
  if (strlen(point) >= sizeof r->point || !*point)
    return snprintf(err, cap, "%s: tensor '%s' does not name a trace point", t->path, x->name), -1;
  if (x->type != 0 && x->type != 26)
    return snprintf(err, cap, "%s: tensor '%s' is %s; trace tensors are F32 or I32", t->path, x->name, x->type_name), -1;
  if (x->n_dims > 2 || x->ne[1] != t->n_pos)
    return snprintf(err, cap, "%s: tensor '%s' has shape [%lld, %lld%s]; a trace tensor is [elements, %lld positions]", t->path,
                    x->name, (long long)x->ne[0], (long long)x->ne[1], x->n_dims > 2 ? ", ..." : "", (long long)t->n_pos), -1;
  snprintf(r->point, sizeof r->point, "%s", point);
  r->layer = layer;
  int tp = qmoe_trace_point_find(point);
  r->order = tp >= 0 ? tp : QMOE_TP_COUNT;
  if (layer >= 0) r->group = 1;
  else {
    /* a model point listed before the table's first per-layer point comes before the layers */
    int first_layer_point = QMOE_TP_COUNT;
    for (int i = QMOE_TP_COUNT - 1; i >= 0; i--)
      if (qmoe_trace_points[i].per_layer) first_layer_point = i;
    r->group = tp >= 0 && tp < first_layer_point ? 0 : 2;
  }
  return 0;
}

static int row_cmp(const void *pa, const void *pb) {
  const row *a = pa, *b = pb;
  if (a->group != b->group) return a->group < b->group ? -1 : 1;
  if (a->layer != b->layer) return a->layer < b->layer ? -1 : 1;
  if (a->order != b->order) return a->order < b->order ? -1 : 1;
  return strcmp(a->point, b->point);
}

static float f32_at(const qmoe_gguf_tensor *t, int64_t i) {
  float v;
  memcpy(&v, (const unsigned char *)t->data + 4 * (uint64_t)i, 4); /* alignment of a hostile file is not assumed */
  return v;
}
static int32_t i32_of(const qmoe_gguf_tensor *t, int64_t i) {
  int32_t v;
  memcpy(&v, (const unsigned char *)t->data + 4 * (uint64_t)i, 4);
  return v;
}

static double cosine_of(double ab, double aa, double bb) {
  if (aa == 0 && bb == 0) return 1.0; /* both zero: identical */
  if (aa == 0 || bb == 0) return 0.0;
  return ab / sqrt(aa * bb);
}

static void compare_f32(row *r, double cos_min) {
  const qmoe_gguf_tensor *a = r->ta, *b = r->tb;
  int64_t ne0 = a->ne[0], np = a->ne[1];
  double ab = 0, aa = 0, bb = 0, dd = 0, mx = 0;
  r->worst_cos = 2, r->worst_pos = -1;
  for (int64_t p = 0; p < np; p++) {
    double pab = 0, paa = 0, pbb = 0;
    for (int64_t i = 0; i < ne0; i++) {
      double x = f32_at(a, p * ne0 + i), y = f32_at(b, p * ne0 + i);
      int fa = isfinite(x), fb = isfinite(y);
      r->nonfinite_a += !fa, r->nonfinite_b += !fb;
      if (!fa || !fb) continue;
      pab += x * y, paa += x * x, pbb += y * y, dd += (x - y) * (x - y);
      if (fabs(x - y) > mx) mx = fabs(x - y);
    }
    double pc = cosine_of(pab, paa, pbb);
    if (pc < r->worst_cos) r->worst_cos = pc, r->worst_pos = p;
    ab += pab, aa += paa, bb += pbb;
  }
  r->elements = ne0 * np;
  r->cosine = cosine_of(ab, aa, bb);
  r->nmse = aa > 0 ? dd / aa : dd == 0 ? 0 : INFINITY;
  r->max_abs = mx;
  if (r->nonfinite_a || r->nonfinite_b) r->verdict = r->nonfinite_a && r->nonfinite_b ? V_NANBOTH : r->nonfinite_a ? V_NANA : V_NANB;
  else r->verdict = r->cosine >= cos_min ? V_MATCH : V_DIVERGE;
}

static int cmp_i32(const void *a, const void *b) {
  int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
  return x < y ? -1 : x > y;
}

/* Per position: the sorted id multisets; ids in one and not the other are recorded. */
static void compare_ids(row *r, topk_diff **diffs, int64_t *n_diffs, int64_t *cap_diffs) {
  const qmoe_gguf_tensor *a = r->ta, *b = r->tb;
  int64_t k = a->ne[0], np = a->ne[1];
  int32_t *sa = xmalloc(sizeof *sa * (size_t)(k ? k : 1)), *sb = xmalloc(sizeof *sb * (size_t)(k ? k : 1));
  r->elements = k * np;
  r->cosine = r->nmse = r->max_abs = NAN;
  r->worst_pos = -1;
  for (int64_t p = 0; p < np; p++) {
    for (int64_t i = 0; i < k; i++) sa[i] = i32_of(a, p * k + i), sb[i] = i32_of(b, p * k + i);
    qsort(sa, (size_t)k, sizeof *sa, cmp_i32);
    qsort(sb, (size_t)k, sizeof *sb, cmp_i32);
    if (!memcmp(sa, sb, sizeof *sa * (size_t)k)) continue;
    if (r->worst_pos < 0) r->worst_pos = p;
    r->diff_positions++;
    if (*n_diffs == *cap_diffs) {
      *cap_diffs = *cap_diffs ? 2 * *cap_diffs : 16;
      topk_diff *nd = realloc(*diffs, sizeof **diffs * (size_t)*cap_diffs);
      if (!nd) abort();
      *diffs = nd;
    }
    topk_diff *d = &(*diffs)[(*n_diffs)++];
    d->layer = r->layer, d->pos = p;
    d->only_a = xmalloc(sizeof(int32_t) * (size_t)k), d->only_b = xmalloc(sizeof(int32_t) * (size_t)k);
    d->n_a = d->n_b = 0;
    int64_t i = 0, j = 0; /* merge of two sorted lists: the multiset differences */
    while (i < k || j < k) {
      if (j >= k || (i < k && sa[i] < sb[j])) d->only_a[d->n_a++] = sa[i++];
      else if (i >= k || sb[j] < sa[i]) d->only_b[d->n_b++] = sb[j++];
      else i++, j++;
    }
  }
  r->verdict = r->diff_positions ? V_DIVERGE : V_MATCH;
  free(sa), free(sb);
}

/* ---- output ---------------------------------------------------------------------------------------- */
static void json_str(FILE *fp, const char *s) {
  fputc('"', fp);
  for (; *s; s++) {
    unsigned char c = (unsigned char)*s;
    if (c == '"' || c == '\\') fprintf(fp, "\\%c", c);
    else if (c < 0x20) fprintf(fp, "\\u%04x", c);
    else fputc(c, fp);
  }
  fputc('"', fp);
}
static void json_num(FILE *fp, double x) {
  if (isfinite(x)) fprintf(fp, "%.17g", x);
  else fputs("null", fp);
}
static void xml_str(FILE *fp, const char *s) {
  for (; *s; s++) {
    unsigned char c = (unsigned char)*s;
    if (c == '<') fputs("&lt;", fp);
    else if (c == '>') fputs("&gt;", fp);
    else if (c == '&') fputs("&amp;", fp);
    else if (c == '"') fputs("&quot;", fp);
    else if (c < 0x20 && c != '\n' && c != '\t') fputc('?', fp);
    else fputc(c, fp);
  }
}
static void ids_list(FILE *fp, const int32_t *x, int n) {
  fputc('[', fp);
  for (int i = 0; i < n; i++) fprintf(fp, "%s%d", i ? ", " : "", x[i]);
  fputc(']', fp);
}
static const char *layer_label(const row *r, char *buf, size_t cap) {
  if (r->layer >= 0) snprintf(buf, cap, "%lld", (long long)r->layer);
  else snprintf(buf, cap, "-");
  return buf;
}

/* The heat map: one row per layer (and one for the model points before and after the layers), one
 * column per point name in forward order. */
static void write_svg(FILE *fp, const row *rows, int64_t nr, double cos_min, const trace *a, const trace *b, int64_t first) {
  const char *cols[QMOE_TP_COUNT + 64];
  int ncols = 0;
  for (int64_t i = 0; i < nr; i++) { /* columns: distinct point names, by table order then name */
    int seen = 0;
    for (int c = 0; c < ncols && !seen; c++) seen = !strcmp(cols[c], rows[i].point);
    if (!seen && ncols < (int)(sizeof cols / sizeof cols[0])) cols[ncols++] = rows[i].point;
  }
  for (int c = 1; c < ncols; c++) /* insertion sort by (order, name) */
    for (int d = c; d > 0; d--) {
      int oa = qmoe_trace_point_find(cols[d - 1]), ob = qmoe_trace_point_find(cols[d]);
      oa = oa < 0 ? QMOE_TP_COUNT : oa, ob = ob < 0 ? QMOE_TP_COUNT : ob;
      if (oa < ob || (oa == ob && strcmp(cols[d - 1], cols[d]) <= 0)) break;
      const char *t = cols[d]; cols[d] = cols[d - 1], cols[d - 1] = t;
    }
  int64_t n_layers = a->n_layers;
  int64_t nrows = n_layers + 1; /* last row: model points */
  const int cw = 44, ch = 18, left = 70, top = 150, legend = 60;
  int width = left + cw * (ncols > 0 ? ncols : 1) + 20, height = top + ch * (int)nrows + legend;
  if (width < 520) width = 520;
  double tscore = -log10(1 - cos_min > 1e-12 ? 1 - cos_min : 1e-12);
  fprintf(fp, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" "
              "font-family=\"monospace\" font-size=\"11\">\n<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n", width, height);
  fprintf(fp, "<text x=\"8\" y=\"16\" font-size=\"13\">qmoe diff: A = ");
  xml_str(fp, a->source);
  fprintf(fp, " vs B = ");
  xml_str(fp, b->source);
  fprintf(fp, "</text>\n<text x=\"8\" y=\"32\">cell: -log10(1 - cosine), green = Match (cosine &gt;= %g), red = Diverge (crossed); "
              "purple NaN, grey Missing</text>\n", cos_min);
  if (first >= 0) {
    char lb[32];
    fprintf(fp, "<text x=\"8\" y=\"48\" fill=\"#b00000\">first divergence: layer %s, %s</text>\n", layer_label(&rows[first], lb, sizeof lb),
            rows[first].point);
  } else fprintf(fp, "<text x=\"8\" y=\"48\" fill=\"#006000\">every point Match</text>\n");
  for (int c = 0; c < ncols; c++) {
    int x = left + c * cw + cw / 2;
    fprintf(fp, "<text transform=\"translate(%d,%d) rotate(-60)\">", x, top - 4);
    xml_str(fp, cols[c]);
    fprintf(fp, "</text>\n");
  }
  for (int64_t l = 0; l < n_layers; l++)
    fprintf(fp, "<text x=\"%d\" y=\"%lld\" text-anchor=\"end\">layer %lld</text>\n", left - 6, (long long)(top + l * ch + ch - 5),
            (long long)l);
  fprintf(fp, "<text x=\"%d\" y=\"%lld\" text-anchor=\"end\">model</text>\n", left - 6, (long long)(top + n_layers * ch + ch - 5));
  for (int64_t i = 0; i < nr; i++) {
    const row *r = &rows[i];
    int c = 0;
    while (c < ncols && strcmp(cols[c], r->point)) c++;
    if (c == ncols) continue;
    int64_t l = r->layer >= 0 ? r->layer : n_layers;
    int x = left + c * cw, y = top + (int)l * ch;
    const char *fill;
    char buf[32];
    if (r->verdict == V_MISSING) fill = "#b0b0b0";
    else if (r->verdict == V_NANA || r->verdict == V_NANB || r->verdict == V_NANBOTH) fill = "#8000a0";
    else if (r->is_ids) fill = r->verdict == V_MATCH ? "#1a9641" : "#d7191c";
    else {
      double s = -log10(1 - r->cosine > 1e-12 ? 1 - r->cosine : 1e-12); /* 0 .. 12 */
      if (r->verdict == V_MATCH) { /* green, darker the closer to 1 */
        double u = (s - tscore) / (12 - tscore);
        u = u < 0 ? 0 : u > 1 ? 1 : u;
        snprintf(buf, sizeof buf, "#%02x%02x%02x", (int)(166 - 140 * u), (int)(217 - 67 * u), (int)(106 - 65 * u));
      } else { /* red, lighter the nearer to the threshold */
        double u = tscore > 0 ? s / tscore : 0;
        u = u < 0 ? 0 : u > 1 ? 1 : u;
        snprintf(buf, sizeof buf, "#%02x%02x%02x", (int)(215 + 38 * u), (int)(25 + 149 * u), (int)(28 + 69 * u));
      }
      fill = buf;
    }
    fprintf(fp, "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"%s\" stroke=\"white\"><title>", x, y, cw, ch, fill);
    char lb[32];
    fprintf(fp, "layer %s ", layer_label(r, lb, sizeof lb));
    xml_str(fp, r->point);
    if (r->is_ids) fprintf(fp, ": %s, top-k sets differ at %lld positions", verdict_name[r->verdict], (long long)r->diff_positions);
    else fprintf(fp, ": %s, cosine %.9f, nmse %.3e, max-abs %.3e", verdict_name[r->verdict], r->cosine, r->nmse, r->max_abs);
    fprintf(fp, "</title></rect>\n");
    if (r->verdict != V_MATCH)
      fprintf(fp, "<path d=\"M%d %d L%d %d M%d %d L%d %d\" stroke=\"black\" stroke-width=\"1.5\"/>\n", x + 3, y + 3, x + cw - 3,
              y + ch - 3, x + cw - 3, y + 3, x + 3, y + ch - 3);
    if (i == first)
      fprintf(fp, "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"none\" stroke=\"black\" stroke-width=\"3\"/>\n", x, y, cw, ch);
  }
  int ly = top + (int)nrows * ch + 20;
  fprintf(fp, "<text x=\"8\" y=\"%d\">A: ", ly);
  xml_str(fp, a->path);
  fprintf(fp, " (model ");
  xml_str(fp, a->model);
  fprintf(fp, ")</text>\n<text x=\"8\" y=\"%d\">B: ", ly + 16);
  xml_str(fp, b->path);
  fprintf(fp, " (model ");
  xml_str(fp, b->model);
  fprintf(fp, ")</text>\n</svg>\n");
}

/* Writes FILE through a temp file in its directory and a rename, so it appears only complete and never
 * replaces one of the inputs. */
static int write_plot(const char *path, const char *in_a, const char *in_b, const row *rows, int64_t nr, double cos_min,
                      const trace *a, const trace *b, int64_t first) {
  struct stat so, si;
  if (stat(path, &so) == 0)
    for (int k = 0; k < 2; k++)
      if (stat(k ? in_b : in_a, &si) == 0 && si.st_dev == so.st_dev && si.st_ino == so.st_ino)
        return cli_error("diff", "--plot %s is the input %s; refusing to overwrite it", path, k ? in_b : in_a);
  size_t n = strlen(path);
  char *tmp = xmalloc(n + 16);
  snprintf(tmp, n + 16, "%s.tmp.XXXXXX", path);
  int fd = mkstemp(tmp);
  if (fd < 0) {
    cli_error("diff", "cannot write %s: %s", path, strerror(errno));
    free(tmp);
    return 1;
  }
  FILE *fp = fdopen(fd, "w");
  write_svg(fp, rows, nr, cos_min, a, b, first);
  int bad = fflush(fp) != 0 || fsync(fileno(fp)) != 0;
  bad |= fclose(fp) != 0;
  if (bad || rename(tmp, path) != 0) {
    cli_error("diff", "cannot write %s: %s", path, strerror(errno));
    unlink(tmp);
    free(tmp);
    return 1;
  }
  free(tmp);
  return 0;
}

static int same_i32_array(const qmoe_gguf_value *x, const qmoe_gguf_value *y, uint64_t *at) {
  if (x->count != y->count) return *at = x->count < y->count ? x->count : y->count, 0;
  for (uint64_t i = 0; i < x->count; i++) {
    int64_t p, q;
    if (i32_at(x, i, &p) || i32_at(y, i, &q) || p != q) return *at = i, 0;
  }
  return 1;
}

static int run(int argc, char **argv) {
  const char *in[2] = { NULL, NULL }, *plot = NULL;
  int json = 0, from_contract = 0, have_min = 0;
  double cos_min = 0;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (!strcmp(a, "--json")) {
      if (json++) return cli_usage_error(&cmd_diff, "--json given twice");
    } else if (!strcmp(a, "--threshold-from-contract")) {
      if (from_contract++) return cli_usage_error(&cmd_diff, "--threshold-from-contract given twice");
    } else if (!strcmp(a, "--plot")) {
      if (plot) return cli_usage_error(&cmd_diff, "--plot given twice");
      if (i + 1 >= argc) return cli_usage_error(&cmd_diff, "--plot needs a FILE.svg");
      plot = argv[++i];
    } else if (!strcmp(a, "--cosine-min")) {
      if (have_min++) return cli_usage_error(&cmd_diff, "--cosine-min given twice");
      char *end;
      if (i + 1 >= argc || (cos_min = strtod(argv[i + 1], &end), *end || end == argv[i + 1]) || !(cos_min >= -1 && cos_min <= 1))
        return cli_usage_error(&cmd_diff, "--cosine-min needs a number from -1 to 1");
      i++;
    } else if (a[0] == '-' && a[1]) {
      return cli_usage_error(&cmd_diff, "unknown option '%s'", a);
    } else if (!in[0]) in[0] = a;
    else if (!in[1]) in[1] = a;
    else return cli_usage_error(&cmd_diff, "unexpected argument '%s'", a);
  }
  if (!in[1]) return cli_usage_error(&cmd_diff, "need two trace files A.gguf B.gguf");
  if (from_contract && have_min) return cli_usage_error(&cmd_diff, "--threshold-from-contract and --cosine-min exclude each other");
  const qmoe_falsifier *fz = qmoe_falsifier_find("FALSIFY-LAYER-COSINE");
  if (!have_min) {
    if (!fz || strcmp(fz->metric, "cosine") || strcmp(fz->comparator, ">="))
      return cli_error("diff", "the model contract has no FALSIFY-LAYER-COSINE check of the form cosine >= X (generated/c/falsifiers.c)"), 2;
    cos_min = fz->threshold;
  }

  trace t[2];
  memset(t, 0, sizeof t);
  char err[1024];
  int status = 2;
  row *rows = NULL;
  topk_diff *diffs = NULL;
  int64_t n_diffs = 0, cap_diffs = 0, nr = 0;
  for (int k = 0; k < 2; k++)
    if (open_trace(in[k], &t[k], err, sizeof err) != 0) {
      cli_error("diff", "%s", err);
      goto done;
    }
  uint64_t at;
  if (!same_i32_array(&t[0].tokens, &t[1].tokens, &at)) {
    int64_t x = -1, y = -1;
    i32_at(&t[0].tokens, at, &x), i32_at(&t[1].tokens, at, &y);
    if (t[0].tokens.count != t[1].tokens.count)
      cli_error("diff", "the traces are of different token lists: %s has %llu tokens, %s has %llu", in[0],
                (unsigned long long)t[0].tokens.count, in[1], (unsigned long long)t[1].tokens.count);
    else cli_error("diff", "the traces are of different token lists: token %llu is %lld in %s and %lld in %s", (unsigned long long)at,
                   (long long)x, in[0], (long long)y, in[1]);
    goto done;
  }
  if (t[0].has_positions != t[1].has_positions ||
      (t[0].has_positions && !same_i32_array(&t[0].positions, &t[1].positions, &at))) {
    cli_error("diff", "the traces store different positions (qmoe.trace.positions): compare traces of the same positions");
    goto done;
  }
  if (t[0].n_layers != t[1].n_layers) {
    cli_error("diff", "the traces are of models with different layer counts: %lld in %s, %lld in %s", (long long)t[0].n_layers,
              in[0], (long long)t[1].n_layers, in[1]);
    goto done;
  }
  int64_t na = qmoe_gguf_tensor_count(t[0].f), nb = qmoe_gguf_tensor_count(t[1].f);
  rows = xmalloc(sizeof *rows * (size_t)(na + nb + 1));
  for (int k = 0; k < 2; k++) {
    for (int64_t i = 0; i < (k ? nb : na); i++) {
      const qmoe_gguf_tensor *x = qmoe_gguf_tensor_at(t[k].f, i);
      const qmoe_gguf_tensor *y = qmoe_gguf_find_tensor(t[1 - k].f, x->name);
      if (k == 1 && y) continue; /* the pair is a row already */
      row *r = &rows[nr++];
      memset(r, 0, sizeof *r);
      if (classify(&t[k], x, r, err, sizeof err) != 0 || (y && classify(&t[1 - k], y, &(row){ 0 }, err, sizeof err) != 0)) {
        cli_error("diff", "%s", err);
        goto done;
      }
      r->ta = k ? y : x, r->tb = k ? x : y;
      r->is_ids = x->type == 26;
      if (!y) {
        r->verdict = V_MISSING;
        r->cosine = r->nmse = r->max_abs = NAN;
        r->worst_pos = -1;
        continue;
      }
      if (x->type != y->type || x->ne[0] != y->ne[0]) {
        cli_error("diff", "tensor '%s' is %s [%lld, %lld] in %s but %s [%lld, %lld] in %s", x->name, r->ta->type_name,
                  (long long)r->ta->ne[0], (long long)r->ta->ne[1], in[0], r->tb->type_name, (long long)r->tb->ne[0],
                  (long long)r->tb->ne[1], in[1]);
        goto done;
      }
    }
  }
  qsort(rows, (size_t)nr, sizeof *rows, row_cmp);
  int64_t first = -1, counts[6] = { 0 };
  for (int64_t i = 0; i < nr; i++) {
    row *r = &rows[i];
    if (r->verdict != V_MISSING) {
      if (r->is_ids) compare_ids(r, &diffs, &n_diffs, &cap_diffs);
      else compare_f32(r, cos_min);
    }
    counts[r->verdict]++;
    if (first < 0 && r->verdict != V_MATCH && r->verdict != V_MISSING) first = i;
  }
  status = counts[V_MATCH] == nr ? 0 : 1;

  char thr[256];
  if (have_min) snprintf(thr, sizeof thr, "cosine >= %g (--cosine-min)", cos_min);
  else snprintf(thr, sizeof thr, "cosine >= %g (FALSIFY-LAYER-COSINE, %s:%d)", cos_min, fz->file, fz->line);
  FILE *o = stdout;
  char lb[32];
  if (json) {
    fprintf(o, "{\n  \"a\": {\"path\": ");
    json_str(o, in[0]);
    fprintf(o, ", \"source\": ");
    json_str(o, t[0].source);
    fprintf(o, ", \"model\": ");
    json_str(o, t[0].model);
    fprintf(o, "},\n  \"b\": {\"path\": ");
    json_str(o, in[1]);
    fprintf(o, ", \"source\": ");
    json_str(o, t[1].source);
    fprintf(o, ", \"model\": ");
    json_str(o, t[1].model);
    fprintf(o, "},\n  \"n_layers\": %lld, \"n_tokens\": %lld, \"n_positions\": %lld,\n", (long long)t[0].n_layers,
            (long long)t[0].n_tokens, (long long)t[0].n_pos);
    fprintf(o, "  \"match\": {\"metric\": \"cosine\", \"comparator\": \">=\", \"threshold\": ");
    json_num(o, cos_min);
    fprintf(o, ", \"from\": ");
    json_str(o, have_min ? "--cosine-min" : fz->id);
    fprintf(o, "},\n  \"rows\": [");
    for (int64_t i = 0; i < nr; i++) {
      const row *r = &rows[i];
      fprintf(o, "%s\n    {\"layer\": ", i ? "," : "");
      if (r->layer >= 0) fprintf(o, "%lld", (long long)r->layer);
      else fputs("null", o);
      fprintf(o, ", \"point\": ");
      json_str(o, r->point);
      fprintf(o, ", \"verdict\": \"%s\", \"kind\": \"%s\", \"in\": \"%s\", \"elements\": %lld, \"cosine\": ", verdict_name[r->verdict],
              r->is_ids ? "ids" : "f32", !r->ta ? "b" : !r->tb ? "a" : "both", (long long)r->elements);
      json_num(o, r->cosine);
      fprintf(o, ", \"nmse\": ");
      json_num(o, r->nmse);
      fprintf(o, ", \"max_abs\": ");
      json_num(o, r->max_abs);
      fprintf(o, ", \"nonfinite_a\": %lld, \"nonfinite_b\": %lld, \"differing_positions\": %lld, \"worst_position\": ",
              (long long)r->nonfinite_a, (long long)r->nonfinite_b, (long long)r->diff_positions);
      if (r->worst_pos >= 0) fprintf(o, "%lld", (long long)r->worst_pos);
      else fputs("null", o);
      fputc('}', o);
    }
    fprintf(o, "\n  ],\n  \"topk_differences\": [");
    for (int64_t i = 0; i < n_diffs; i++) {
      fprintf(o, "%s\n    {\"layer\": %lld, \"position\": %lld, \"only_a\": ", i ? "," : "", (long long)diffs[i].layer, (long long)diffs[i].pos);
      ids_list(o, diffs[i].only_a, diffs[i].n_a);
      fprintf(o, ", \"only_b\": ");
      ids_list(o, diffs[i].only_b, diffs[i].n_b);
      fputc('}', o);
    }
    fprintf(o, "\n  ],\n  \"first_divergence\": ");
    if (first >= 0) {
      fprintf(o, "{\"layer\": ");
      if (rows[first].layer >= 0) fprintf(o, "%lld", (long long)rows[first].layer);
      else fputs("null", o);
      fprintf(o, ", \"point\": ");
      json_str(o, rows[first].point);
      fprintf(o, ", \"verdict\": \"%s\"}", verdict_name[rows[first].verdict]);
    } else fputs("null", o);
    fprintf(o, ",\n  \"counts\": {");
    for (int v = 0; v < 6; v++) fprintf(o, "%s\"%s\": %lld", v ? ", " : "", verdict_name[v], (long long)counts[v]);
    fprintf(o, "},\n  \"status\": %d\n}\n", status);
  } else {
    fprintf(o, "A: %s (source %s, model %s)\nB: %s (source %s, model %s)\n", in[0], t[0].source, t[0].model, in[1], t[1].source,
            t[1].model);
    fprintf(o, "%lld tokens, %lld positions stored, %lld layers; Match: %s\n\n", (long long)t[0].n_tokens, (long long)t[0].n_pos,
            (long long)t[0].n_layers, thr);
    fprintf(o, "%5s  %-18s %-13s %-10s %-10s %-8s %s\n", "layer", "point", "cosine", "nmse", "max-abs", "worst@", "verdict");
    for (int64_t i = 0; i < nr; i++) {
      const row *r = &rows[i];
      fprintf(o, "%5s  %-18s ", layer_label(r, lb, sizeof lb), r->point);
      if (r->verdict == V_MISSING) fprintf(o, "%-13s %-10s %-10s %-8s Missing (only in %s)\n", "-", "-", "-", "-", r->ta ? "A" : "B");
      else if (r->is_ids) {
        fprintf(o, "%-13s %-10s %-10s ", "ids", "-", "-");
        if (r->diff_positions) fprintf(o, "%-8lld %s (sets differ at %lld of %lld positions)\n", (long long)r->worst_pos,
                                       verdict_name[r->verdict], (long long)r->diff_positions, (long long)r->ta->ne[1]);
        else fprintf(o, "%-8s %s\n", "-", verdict_name[r->verdict]);
      } else if (r->verdict >= V_NANA && r->verdict <= V_NANBOTH)
        fprintf(o, "%-13s %-10s %-10s %-8s %s (%lld non-finite in A, %lld in B)\n", "-", "-", "-", "-", verdict_name[r->verdict],
                (long long)r->nonfinite_a, (long long)r->nonfinite_b);
      else {
        char wp[24] = "-"; /* the position of the lowest per-position cosine, shown where it matters */
        if (r->verdict == V_DIVERGE) snprintf(wp, sizeof wp, "%lld", (long long)r->worst_pos);
        fprintf(o, "%-13.9f %-10.3e %-10.3e %-8s %s\n", r->cosine, r->nmse, r->max_abs, wp, verdict_name[r->verdict]);
      }
    }
    if (n_diffs) {
      fprintf(o, "\ntop-k sets differ (layer, position: ids only in A / only in B):\n");
      for (int64_t i = 0; i < n_diffs && i < 50; i++) {
        fprintf(o, "  layer %lld position %lld: only in A ", (long long)diffs[i].layer, (long long)diffs[i].pos);
        ids_list(o, diffs[i].only_a, diffs[i].n_a);
        fprintf(o, ", only in B ");
        ids_list(o, diffs[i].only_b, diffs[i].n_b);
        fputc('\n', o);
      }
      if (n_diffs > 50) fprintf(o, "  ... (%lld more; --json lists all)\n", (long long)(n_diffs - 50));
    }
    fprintf(o, "\n%lld points: %lld Match, %lld Diverge, %lld NanA, %lld NanB, %lld NanBoth, %lld Missing\n", (long long)nr,
            (long long)counts[0], (long long)counts[1], (long long)counts[2], (long long)counts[3], (long long)counts[4],
            (long long)counts[5]);
    if (first >= 0) {
      const row *r = &rows[first];
      fprintf(o, "first divergence: layer %s, point %s (%s", layer_label(r, lb, sizeof lb), r->point, verdict_name[r->verdict]);
      if (r->verdict == V_DIVERGE && !r->is_ids) fprintf(o, ": cosine %.9f < %g, worst at position %lld", r->cosine, cos_min, (long long)r->worst_pos);
      fprintf(o, ")\n");
    } else if (status == 0) fprintf(o, "every point Match\n");
  }
  if (fflush(o) != 0 || ferror(o)) {
    cli_error("diff", "cannot write the report to stdout");
    status = 2;
    goto done;
  }
  if (plot && write_plot(plot, in[0], in[1], rows, nr, cos_min, &t[0], &t[1], first) != 0) status = 2;
done:
  for (int k = 0; k < 2; k++) close_trace(&t[k]);
  for (int64_t i = 0; i < n_diffs; i++) free(diffs[i].only_a), free(diffs[i].only_b);
  free(diffs);
  free(rows);
  return status;
}

const qmoe_command cmd_diff = { "diff", "compare two trace files layer by layer: cosine, NMSE, first divergence", usage, run };
