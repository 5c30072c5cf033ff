/* cmd_diff.c: `qmoe diff A.gguf B.gguf`: compares two trace files (docs/diff.md) layer by layer and point
 * by point in forward order: cosine, NMSE, max-abs and a verdict; names the first divergent (layer, point). */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "backend.h"
#include "cmd.h"
#include "diag.h"
#include "falsifiers.h"
#include "trace_points.h"
#include "trace_record.h"

static const char usage[] =
  "usage: qmoe diff A.gguf B.gguf [--json] [--plot FILE.svg] [--threshold-from-contract | --cosine-min X]\n"
  "       qmoe diff -m MODEL --backends A,B (-p TEXT | --tokens IDS) [--acc X[,Y]] [--stages LIST|all]\n"
  "                 [--layers R] [--ctx N] [--json] [--plot FILE.svg] [--cosine-min X]\n"
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
  "Run mode: traces the prompt on backends A and B (cpu, vulkan, cuda) in-process and compares the traces:\n"
  "  -m MODEL       a qwen3moe GGUF;  -p TEXT  encoded with its tokenizer;  --tokens IDS  comma-separated ids\n"
  "  --acc X[,Y]    accumulators, one for both or one per backend (f32, f64, q8; default f32)\n"
  "  --stages LIST  trace points to record (default all; `qmoe trace --stages list`); --layers A..B (default all)\n"
  "exit status: 0 every point Match, 1 some point is not Match, 2 error\n"
  "examples: qmoe diff cpu.trace.gguf vulkan.trace.gguf --plot diff.svg\n"
  "          qmoe diff -m build/models/tiny.gguf --backends cpu,vulkan -p \"Hello\" --json\n";

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

/* Replaces control characters and bytes that are not well-formed UTF-8 by '?' in place, so names and
 * strings from a file print as valid text, JSON and XML. */
static void sanitize(char *s) {
  unsigned char *p = (unsigned char *)s;
  while (*p) {
    size_t n = qmoe_utf8_seq_len(p, strlen((const char *)p));
    if (n == 1 && (*p < 0x20 || *p == 0x7F)) n = 0;
    if (n == 0) *p++ = '?';
    else p += n;
  }
}

static char *dup_str(const char *s, uint64_t n) {
  char *p = xmalloc((size_t)n + 1);
  memcpy(p, s, (size_t)n);
  p[n] = 0;
  sanitize(p);
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

/* "blk.N.REST" -> N and *rest = REST; -1 if the name is not a per-layer one. */
static int64_t layer_of(const char *name, const char **rest) {
  if (strncmp(name, "blk.", 4)) return -1;
  int64_t n = 0;
  const char *p = name + 4;
  if (*p < '0' || *p > '9') return -1;
  while (*p >= '0' && *p <= '9') {
    if (n > 100000000) return -1;
    n = n * 10 + (*p++ - '0');
  }
  if (*p != '.') return -1;
  *rest = p + 1;
  return n;
}

/* Splits a tensor name into (group, layer, order, point) and checks its shape and type. */
static int classify(const trace *t, const qmoe_gguf_tensor *x, row *r, char *err, size_t cap) {
  const char *rest = NULL;
  int64_t layer = layer_of(x->name, &rest);
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
  sanitize(r->point);
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

/* A cell's colour for score s = -log10(1 - cosine) (0..12): green for Match, darker the closer to 1; red for
 * Diverge, lighter the nearer to the threshold's score t. */
static const char *cell_color(double s, int match, double t, char *buf, size_t cap) {
  double u = match ? (s - t) / (12 - t) : t > 0 ? s / t : 0;
  u = u < 0 ? 0 : u > 1 ? 1 : u;
  if (match) snprintf(buf, cap, "#%02x%02x%02x", (int)(166 - 140 * u), (int)(217 - 67 * u), (int)(106 - 65 * u));
  else snprintf(buf, cap, "#%02x%02x%02x", (int)(215 + 38 * u), (int)(25 + 149 * u), (int)(28 + 69 * u));
  return buf;
}

/* The heat map: one row per layer (and one for the model points before and after the layers), one
 * column per point name in forward order. */
static void write_svg(FILE *fp, const row *rows, int64_t nr, double cos_min, const trace *a, const trace *b, int64_t first,
                      const char *const label[2]) {
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
  int width = left + cw * (ncols > 0 ? ncols : 1) + 20, height = top + ch * (int)nrows + legend + 30;
  if (width < 740) width = 740;
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
    else fill = cell_color(-log10(1 - r->cosine > 1e-12 ? 1 - r->cosine : 1e-12), r->verdict == V_MATCH, tscore, buf, sizeof buf);
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
  /* the colour scale, as 1 - cosine */
  int sy = top + (int)nrows * ch + 8, sx = 8;
  const double marks[] = { 0, 1, 1.99, 2, 4, 6, 9, 12 };
  for (size_t k = 0; k < sizeof marks / sizeof marks[0]; k++) {
    double sc = marks[k] < 2 ? marks[k] * tscore / 2 : tscore + (marks[k] - 2) * (12 - tscore) / 10;
    char cb[16];
    cell_color(sc, sc >= tscore, tscore, cb, sizeof cb);
    fprintf(fp, "<rect x=\"%d\" y=\"%d\" width=\"14\" height=\"12\" fill=\"%s\"/><text x=\"%d\" y=\"%d\">%.0e</text>\n", sx, sy, cb,
            sx + 17, sy + 10, pow(10, -sc));
    sx += 78;
  }
  fprintf(fp, "<text x=\"%d\" y=\"%d\">(1 - cosine)</text>\n", sx, sy + 10);
  int ly = sy + 34;
  fprintf(fp, "<text x=\"8\" y=\"%d\">A: ", ly);
  xml_str(fp, label ? label[0] : a->path);
  fprintf(fp, " (model ");
  xml_str(fp, a->model);
  fprintf(fp, ")</text>\n<text x=\"8\" y=\"%d\">B: ", ly + 16);
  xml_str(fp, label ? label[1] : b->path);
  fprintf(fp, " (model ");
  xml_str(fp, b->model);
  fprintf(fp, ")</text>\n</svg>\n");
}

/* Opens the plot's output through qmoe_out (a temp file beside it, renamed into place at commit; refused when
 * it is one of the inputs), before any work. 0 or 2 (error printed). */
static int open_plot(const char *path, const char *const inputs[3], qmoe_out **o) {
  const char *in[3];
  size_t n_in = 0;
  for (int k = 0; k < 3; k++)
    if (inputs[k]) in[n_in++] = inputs[k];
  if (qmoe_out_open(path, in, n_in, 0, o)) return cli_error("diff", "--plot: %s", qmoe_last_error()), 2;
  return 0;
}

/* Writes the SVG to O and commits it (or aborts O on error). 0 or 1 (error printed). */
static int write_plot(qmoe_out *o, const row *rows, int64_t nr, double cos_min, const trace *a, const trace *b,
                      int64_t first, const char *const label[2]) {
  char *text = NULL;
  size_t len = 0;
  FILE *mem = open_memstream(&text, &len);
  if (!mem) return qmoe_out_abort(o), cli_error("diff", "out of memory for the plot");
  write_svg(mem, rows, nr, cos_min, a, b, first, label);
  if (fclose(mem) != 0) {
    free(text);
    qmoe_out_abort(o);
    return cli_error("diff", "out of memory for the plot");
  }
  int rc = qmoe_out_write(o, text, len);
  if (rc) qmoe_out_abort(o);
  else rc = qmoe_out_commit(o);
  free(text);
  if (rc) return cli_error("diff", "--plot: %s", qmoe_last_error());
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

/* Compares the trace files in[0] and in[1] and reports (text or JSON on stdout, the plot to PLOT); PROTECT
 * (or NULL) is one more input the plot must not replace; LABEL (or NULL) names A and B in the report instead
 * of their paths (the run mode's temporary files). Returns the exit status: 0, 1 or 2. */
static int diff_files(const char *const in[2], int json, const char *plot, int have_min, double cos_min,
                      const qmoe_falsifier *fz, const char *protect, const char *const label[2]) {
  qmoe_out *plot_out = NULL;
  const char *inputs[3] = { in[0], in[1], protect };
  if (plot && open_plot(plot, inputs, &plot_out)) return 2;
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
    json_str(o, label ? label[0] : in[0]);
    fprintf(o, ", \"source\": ");
    json_str(o, t[0].source);
    fprintf(o, ", \"model\": ");
    json_str(o, t[0].model);
    fprintf(o, "},\n  \"b\": {\"path\": ");
    json_str(o, label ? label[1] : in[1]);
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
    fprintf(o, "A: %s (source %s, model %s)\nB: %s (source %s, model %s)\n", label ? label[0] : in[0], t[0].source, t[0].model,
            label ? label[1] : in[1], t[1].source, t[1].model);
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
  if (plot_out) {
    status = write_plot(plot_out, rows, nr, cos_min, &t[0], &t[1], first, label) != 0 ? 2 : status;
    plot_out = NULL;
  }
done:
  if (plot_out) qmoe_out_abort(plot_out);
  for (int k = 0; k < 2; k++) close_trace(&t[k]);
  for (int64_t i = 0; i < n_diffs; i++) free(diffs[i].only_a), free(diffs[i].only_b);
  free(diffs);
  free(rows);
  return status;
}

/* Run mode: traces the prompt on two backends in-process (temp files), then compares them. */
static int run_backends(const char *model, const char *backends, const char *prompt, const char *tokens, const char *accs,
                        const char *stages, const char *layers, const char *ctx, int json, const char *plot, int have_min,
                        double cos_min, const qmoe_falsifier *fz) {
  char be[2][32];
  const char *comma = strchr(backends, ',');
  if (!comma || strchr(comma + 1, ',') || comma == backends || !comma[1] || (size_t)(comma - backends) >= sizeof be[0] ||
      strlen(comma + 1) >= sizeof be[1])
    return cli_usage_error(&cmd_diff, "--backends needs two backends A,B (e.g. cpu,vulkan), not '%s'", backends);
  snprintf(be[0], sizeof be[0], "%.*s", (int)(comma - backends), backends);
  snprintf(be[1], sizeof be[1], "%s", comma + 1);
  int acc[2];
  const char *ac = accs ? strchr(accs, ',') : NULL;
  char acc_a[16];
  if (ac) {
    snprintf(acc_a, sizeof acc_a, "%.*s", (int)(ac - accs < 15 ? ac - accs : 15), accs);
    if (cli_parse_acc("diff", acc_a, &acc[0]) || cli_parse_acc("diff", ac + 1, &acc[1])) return 2;
  } else if (cli_parse_acc("diff", accs, &acc[0])) return 2;
  else acc[1] = acc[0];
  unsigned char points[QMOE_TP_COUNT];
  if (cli_trace_parse_points("diff", stages ? stages : "all", points)) return 2;
  int64_t n_ctx = 0;
  if (ctx && cli_parse_count("diff", "--ctx", ctx, 1, 1 << 24, &n_ctx)) return 2;

  /* The tokens: given, or the prompt encoded with the model's tokenizer. The model is checked first. */
  qmoe_gguf *f;
  if (qmoe_gguf_open(model, &f)) return cli_error("diff", "%s", qmoe_last_error()), 2;
  qmoe_model_config c;
  if (qmoe_model_check(f, &c)) {
    cli_error("diff", "%s", qmoe_last_error());
    qmoe_gguf_close(f);
    return 2;
  }
  int32_t *ids = NULL;
  size_t n_ids = 0;
  int status = 2;
  if (tokens) {
    if (cli_parse_ids("diff", tokens, &ids, &n_ids)) {
      qmoe_gguf_close(f);
      return 2;
    }
  } else {
    qmoe_tokenizer *tk;
    if (qmoe_tokenizer_load(f, &tk)) {
      cli_error("diff", "-p needs the model's tokenizer: %s (or give --tokens IDS)", qmoe_last_error());
      qmoe_gguf_close(f);
      return 2;
    }
    int e = qmoe_tokenizer_encode(tk, prompt, strlen(prompt), 1, &ids, &n_ids);
    qmoe_tokenizer_free(tk);
    if (e) {
      cli_error("diff", "%s", qmoe_last_error());
      qmoe_gguf_close(f);
      return 2;
    }
  }
  qmoe_gguf_close(f);
  int64_t first = 0, end = -1;
  if (n_ids == 0) {
    cli_error("diff", "the prompt has no tokens");
    goto done;
  }
  if (layers && strcmp(layers, "all")) {
    char why[256];
    if (cli_parse_rows(layers, c.n_layers, &first, &end, why, sizeof why)) {
      cli_error("diff", "--layers: %s (the model has layers 0..%lld)", why, (long long)c.n_layers);
      goto done;
    }
  }
  if (plot) { /* refuse a bad plot path before any tracing */
    qmoe_out *o;
    const char *inputs[3] = { model, NULL, NULL };
    if (open_plot(plot, inputs, &o)) goto done;
    qmoe_out_abort(o);
  }
  const char *tmp = getenv("TMPDIR");
  char dir[4096];
  snprintf(dir, sizeof dir, "%s/qmoe-diff-XXXXXX", tmp && *tmp ? tmp : "/tmp");
  if (!mkdtemp(dir)) {
    cli_error("diff", "cannot make a temporary directory %s: %s", dir, strerror(errno));
    goto done;
  }
  char path[2][4200];
  for (int k = 0; k < 2; k++) {
    snprintf(path[k], sizeof path[k], "%s/%c-%s.trace.gguf", dir, 'a' + k, be[k]);
    fprintf(stderr, "qmoe diff: tracing %zu tokens on %s (%s)\n", n_ids, be[k], qmoe_acc_name(acc[k]));
    if (cli_trace_record("diff", model, be[k], acc[k], n_ctx, points, first, end, ids, n_ids, path[k], 1)) {
      status = 2;
      break;
    }
    status = 0;
  }
  if (status == 0) {
    const char *in[2] = { path[0], path[1] };
    char lab[2][160];
    for (int k = 0; k < 2; k++) snprintf(lab[k], sizeof lab[k], "%s %s", be[k], qmoe_acc_name(acc[k]));
    const char *label[2] = { lab[0], lab[1] };
    status = diff_files(in, json, plot, have_min, cos_min, fz, model, label);
  }
  for (int k = 0; k < 2; k++) unlink(path[k]);
  rmdir(dir);
done:
  free(ids);
  return status;
}

static int run(int argc, char **argv) {
  enum { O_JSON, O_CONTRACT, O_PLOT, O_MIN, O_M, O_BACKENDS, O_P, O_TOKENS, O_ACC, O_STAGES, O_LAYERS, O_CTX, O_N_ };
  cli_opt o[O_N_] = {
    [O_JSON] = { "--json", NULL, 0 }, [O_CONTRACT] = { "--threshold-from-contract", NULL, 0 },
    [O_PLOT] = { "--plot", NULL, 1 }, [O_MIN] = { "--cosine-min", NULL, 1 }, [O_M] = { "-m", "--model", 1 },
    [O_BACKENDS] = { "--backends", NULL, 1 }, [O_P] = { "-p", "--prompt", 1 }, [O_TOKENS] = { "--tokens", NULL, 1 },
    [O_ACC] = { "--acc", NULL, 1 }, [O_STAGES] = { "--stages", NULL, 1 }, [O_LAYERS] = { "--layers", NULL, 1 },
    [O_CTX] = { "--ctx", NULL, 1 },
  };
  /* Positional trace files are taken out first; the rest goes through the option table. */
  const char *in[2] = { NULL, NULL };
  char **rest = xmalloc(sizeof *rest * (size_t)(argc + 1));
  int nrest = 0;
  rest[nrest++] = argv[0];
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    int takes = 0;
    for (int k = 0; k < O_N_; k++)
      if (!strcmp(a, o[k].name) || (o[k].alt && !strcmp(a, o[k].alt))) takes = o[k].takes_value;
    if (a[0] == '-' && a[1]) {
      rest[nrest++] = argv[i];
      if (takes && i + 1 < argc) rest[nrest++] = argv[++i];
    } else if (!in[0]) in[0] = a;
    else if (!in[1]) in[1] = a;
    else {
      free(rest);
      return cli_usage_error(&cmd_diff, "unexpected argument '%s'", a);
    }
  }
  int rc = cli_parse_opts(&cmd_diff, nrest, rest, o, O_N_);
  free(rest);
  if (rc) return rc;
  int have_min = o[O_MIN].value != NULL;
  double cos_min = 0;
  if (o[O_CONTRACT].value && have_min) return cli_usage_error(&cmd_diff, "--threshold-from-contract and --cosine-min exclude each other");
  if (have_min) {
    char *end;
    cos_min = strtod(o[O_MIN].value, &end);
    if (*end || end == o[O_MIN].value || !(cos_min >= -1 && cos_min <= 1))
      return cli_usage_error(&cmd_diff, "--cosine-min needs a number from -1 to 1, not '%s'", o[O_MIN].value);
  }
  const qmoe_falsifier *fz = qmoe_falsifier_find("FALSIFY-LAYER-COSINE");
  if (!have_min) {
    if (!fz || strcmp(fz->metric, "cosine") || strcmp(fz->comparator, ">="))
      return cli_error("diff", "the model contract has no FALSIFY-LAYER-COSINE check of the form cosine >= X (generated/c/falsifiers.c)"), 2;
    cos_min = fz->threshold;
  }
  int json = o[O_JSON].value != NULL;
  const char *plot = o[O_PLOT].value;
  int run_mode = o[O_M].value || o[O_BACKENDS].value;
  if (run_mode) {
    if (in[0]) return cli_usage_error(&cmd_diff, "give two trace files or -m MODEL --backends A,B, not both");
    if (!o[O_M].value || !o[O_BACKENDS].value) return cli_usage_error(&cmd_diff, "the run mode needs -m MODEL and --backends A,B");
    if (!o[O_P].value == !o[O_TOKENS].value) return cli_usage_error(&cmd_diff, "the run mode needs -p TEXT or --tokens IDS");
    return run_backends(o[O_M].value, o[O_BACKENDS].value, o[O_P].value, o[O_TOKENS].value, o[O_ACC].value,
                        o[O_STAGES].value, o[O_LAYERS].value, o[O_CTX].value, json, plot, have_min, cos_min, fz);
  }
  for (int k = O_P; k < O_N_; k++)
    if (o[k].value) return cli_usage_error(&cmd_diff, "%s belongs to the run mode (-m MODEL --backends A,B)", o[k].name);
  if (!in[1]) return cli_usage_error(&cmd_diff, "need two trace files A.gguf B.gguf (or -m MODEL --backends A,B)");
  return diff_files(in, json, plot, have_min, cos_min, fz, NULL, NULL);
}

const qmoe_command cmd_diff = { "diff", "compare two trace files layer by layer: cosine, NMSE, first divergence", usage, run };
