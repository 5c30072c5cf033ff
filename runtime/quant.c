/* quant.c: the reference quantizers behind qmoe_quantize_row. Encoding only: every value is decoded by
 * the code generated from contracts/quant/<q>.yaml (qmoe_qtype_info.dequant_row), never by hand here. */
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include "qmoe.h"
#include "qtypes.h"

/* ---- Scalar conversions (round to nearest even) -------------------------------------------------- */

static uint32_t f32_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }

static uint16_t f32_to_f16(float f) {
  uint32_t u = f32_bits(f);
  uint32_t s = (u >> 16) & 0x8000u, a = u & 0x7FFFFFFFu;
  if (a > 0x7F800000u) return (uint16_t)(s | 0x7E00u | ((a >> 13) & 0x3FFu)); /* NaN stays a (quiet) NaN */
  if (a >= 0x477FF000u) return (uint16_t)(s | 0x7C00u); /* >= 65520 (halfway past 65504) rounds to inf */
  uint32_t e = a >> 23;
  if (e < 113) { /* below 2^-14: an f16 subnormal, in units of 2^-24 */
    if (e < 102) return (uint16_t)s; /* below 2^-25: rounds to zero */
    uint32_t m = (a & 0x7FFFFFu) | 0x800000u, shift = 126 - e; /* value = m * 2^(e-150) = (m >> shift) units */
    uint32_t q = m >> shift, rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
    if (rem > half || (rem == half && (q & 1))) q++;
    return (uint16_t)(s | q);
  }
  uint32_t h = ((e - 112) << 10) | ((a >> 13) & 0x3FFu), rem = a & 0x1FFFu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1))) h++; /* a carry into the exponent is still right */
  return (uint16_t)(s | h);
}

static uint16_t f32_to_bf16(float f) {
  uint32_t u = f32_bits(f);
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return (uint16_t)((u >> 16) | 0x40u); /* quiet NaN */
  return (uint16_t)((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

static float f16_to_f32(uint16_t h) { /* exact; used to recompute with the stored (rounded) scales */
  uint32_t s = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1Fu, m = h & 0x3FFu, u;
  if (e == 0x1F) u = s | 0x7F800000u | m << 13;
  else if (e == 0) { float v = (float)m * 0x1p-24f; return s ? -v : v; }
  else u = s | (e + 112) << 23 | m << 13;
  float f;
  memcpy(&f, &u, 4);
  return f;
}

static void put16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); }
static void put32(uint8_t *p, uint32_t v) { for (int k = 0; k < 4; k++) p[k] = (uint8_t)(v >> (8 * k)); }

/* Nearest int, ties to even (ggml's nearest_int does the same for the magnitudes quantizers see). */
static int nearest(float v) { return (int)lrintf(v); }

/* Signed value of the largest |x| (the first one on ties), and that magnitude. */
static float signed_absmax(const float *x, int n, float *amax_out) {
  float amax = 0, max = 0;
  for (int i = 0; i < n; i++) {
    float a = fabsf(x[i]);
    if (a > amax) { amax = a; max = x[i]; }
  }
  if (amax_out) *amax_out = amax;
  return max;
}

/* Writes V into float field F of block B. */
static void put_float_field(uint8_t *b, const qmoe_qfield *f, float v) {
  uint8_t *p = b + f->offset;
  if (f->type == QMOE_QF_F16) put16(p, f32_to_f16(v));
  else if (f->type == QMOE_QF_BF16) put16(p, f32_to_bf16(v));
  else put32(p, f32_bits(v));
}
static int is_float_field(const qmoe_qfield *f) {
  return f->type == QMOE_QF_F16 || f->type == QMOE_QF_BF16 || f->type == QMOE_QF_F32;
}
static int field_size(const qmoe_qfield *f) {
  switch (f->type) {
  case QMOE_QF_U8: case QMOE_QF_I8: return 1;
  case QMOE_QF_F32: return 4;
  default: return 2;
  }
}

/* ---- Q8_0, Q8_K: ggml's reference rules (ggml-quants.c quantize_row_q8_0_ref / _q8_K_ref) ---------- */

static void quantize_q8_0_block(const float *x, uint8_t *b) {
  float amax;
  signed_absmax(x, 32, &amax);
  float d = amax / 127.0f, id = d != 0 ? 1.0f / d : 0.0f;
  put16(b, f32_to_f16(d));
  for (int i = 0; i < 32; i++) b[2 + i] = (uint8_t)(int8_t)roundf(x[i] * id); /* half away from zero */
}

static void quantize_q8_k_block(const float *x, uint8_t *b) {
  float amax, max = signed_absmax(x, 256, &amax);
  memset(b, 0, 292);
  if (amax == 0) return; /* d = 0, qs = 0, bsums = 0 */
  float iscale = -127.0f / max;
  int8_t q[256];
  for (int i = 0; i < 256; i++) {
    int v = nearest(iscale * x[i]);
    q[i] = (int8_t)(v > 127 ? 127 : v);
    b[4 + i] = (uint8_t)q[i];
  }
  for (int j = 0; j < 16; j++) {
    int s = 0;
    for (int i = 0; i < 16; i++) s += q[16 * j + i];
    put16(b + 260 + 2 * j, (uint16_t)(int16_t)s);
  }
  put32(b, f32_bits(1.0f / iscale));
}

/* ---- K-quant scale searches ---------------------------------------------------------------------- */

/* Fits x[i] ≈ scale·L[i] − min with 0 <= L <= nmax (min >= 0), minimizing Σ w·err². Starts from the
 * min/max grid and tries nstep further grids iscale = (nmax + rmin + rdelta·k)/(max − min), refitting
 * scale and min by weighted least squares for each. Returns scale; *min_out = min. */
static float fit_scale_min(int n, int nmax, const float *x, const float *w, uint8_t *L, float *min_out,
                           float rmin, float rdelta, int nstep) {
  float lo = x[0], hi = x[0], sw = w[0], swx = w[0] * x[0];
  for (int i = 1; i < n; i++) {
    if (x[i] < lo) lo = x[i];
    if (x[i] > hi) hi = x[i];
    sw += w[i];
    swx += w[i] * x[i];
  }
  if (lo > 0) lo = 0;
  if (hi == lo) {
    memset(L, 0, (size_t)n);
    *min_out = -lo;
    return 0;
  }
  float iscale = nmax / (hi - lo), scale = 1 / iscale, best = 0;
  for (int i = 0; i < n; i++) {
    int l = nearest(iscale * (x[i] - lo));
    L[i] = (uint8_t)(l < 0 ? 0 : l > nmax ? nmax : l);
    float e = scale * L[i] + lo - x[i];
    best += w[i] * e * e;
  }
  uint8_t T[256];
  for (int k = 0; k <= nstep; k++) {
    float is = (rmin + rdelta * k + nmax) / (hi - lo);
    float sl = 0, sl2 = 0, sxl = 0;
    for (int i = 0; i < n; i++) {
      int l = nearest(is * (x[i] - lo));
      l = l < 0 ? 0 : l > nmax ? nmax : l;
      T[i] = (uint8_t)l;
      sl += w[i] * l;
      sl2 += w[i] * l * l;
      sxl += w[i] * l * x[i];
    }
    float D = sw * sl2 - sl * sl;
    if (D <= 0) continue;
    float s = (sw * sxl - swx * sl) / D, m = (sl2 * swx - sl * sxl) / D;
    if (m > 0) { m = 0; s = sxl / sl2; } /* the format's min only subtracts */
    float err = 0;
    for (int i = 0; i < n; i++) {
      float e = s * T[i] + m - x[i];
      err += w[i] * e * e;
    }
    if (err < best) {
      memcpy(L, T, (size_t)n);
      best = err;
      scale = s;
      lo = m;
    }
  }
  *min_out = -lo;
  return scale;
}

/* Fits x[i] ≈ scale·L[i] with −nmax <= L < nmax, weights x², trying 19 grids around −nmax/max. */
static float fit_scale_sym(int n, int nmax, const float *x) {
  float amax, max = signed_absmax(x, n, &amax);
  if (amax < 1e-30f) return 0;
  float best_scale = 0, best = 0;
  for (int k = -9; k <= 9; k++) {
    float is = -(nmax + 0.1f * k) / max;
    float sxl = 0, sl2 = 0;
    for (int i = 0; i < n; i++) {
      int l = nearest(is * x[i]);
      l = l < -nmax ? -nmax : l > nmax - 1 ? nmax - 1 : l;
      float w = x[i] * x[i];
      sxl += w * x[i] * l;
      sl2 += w * l * l;
    }
    /* Weighted least squares at this grid: error = Σw x² − sxl²/sl2; keep the largest sxl²/sl2. */
    if (sl2 > 0 && (best_scale == 0 || sxl * sxl > best * sl2)) {
      best_scale = sxl / sl2;
      best = best_scale * sxl;
    }
  }
  return best_scale;
}

/* The 6-bit scale and min of sub-block j from the 12 packed bytes (the contract's packing). */
static void get_scale_min(const uint8_t *q, int j, int *sc, int *m) {
  if (j < 4) {
    *sc = q[j] & 63;
    *m = q[j + 4] & 63;
  } else {
    *sc = (q[j + 4] & 15) | ((q[j - 4] >> 6) << 4);
    *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
  }
}

/* Q4_K (nmax 15) and Q5_K (nmax 31): 8 sub-blocks of 32, weights av|x| + |x_i| as ggml uses. */
static void quantize_q45_k_block(const float *x, uint8_t *b, int nmax) {
  float scales[8], mins[8], w[32], sum_x2 = 0;
  uint8_t L[256];
  for (int i = 0; i < 256; i++) sum_x2 += x[i] * x[i];
  float av_x = sqrtf(sum_x2 / 256);
  float max_scale = 0, max_min = 0;
  for (int j = 0; j < 8; j++) {
    for (int i = 0; i < 32; i++) w[i] = av_x + fabsf(x[32 * j + i]);
    if (nmax == 15) scales[j] = fit_scale_min(32, 15, x + 32 * j, w, L + 32 * j, &mins[j], -1.0f, 0.1f, 20);
    else scales[j] = fit_scale_min(32, 31, x + 32 * j, w, L + 32 * j, &mins[j], -0.5f, 0.1f, 15);
    if (scales[j] > max_scale) max_scale = scales[j];
    if (mins[j] > max_min) max_min = mins[j];
  }
  uint8_t *sc = b + 4;
  memset(b, 0, nmax == 15 ? 144 : 176);
  float inv_scale = max_scale > 0 ? 63.0f / max_scale : 0, inv_min = max_min > 0 ? 63.0f / max_min : 0;
  for (int j = 0; j < 8; j++) {
    int ls = nearest(inv_scale * scales[j]), lm = nearest(inv_min * mins[j]);
    ls = ls > 63 ? 63 : ls < 0 ? 0 : ls;
    lm = lm > 63 ? 63 : lm < 0 ? 0 : lm;
    if (j < 4) {
      sc[j] |= (uint8_t)ls;
      sc[j + 4] |= (uint8_t)lm;
    } else {
      sc[j + 4] = (uint8_t)((ls & 15) | ((lm & 15) << 4));
      sc[j - 4] |= (uint8_t)((ls >> 4) << 6);
      sc[j] |= (uint8_t)((lm >> 4) << 6);
    }
  }
  uint16_t hd = f32_to_f16(max_scale / 63.0f), hm = f32_to_f16(max_min / 63.0f);
  put16(b, hd);
  put16(b + 2, hm);
  /* Re-quantize against the stored scales, evaluated as the decoder does: y = (d·sc)·q − dmin·m. */
  float d = f16_to_f32(hd), dmin = f16_to_f32(hm);
  for (int j = 0; j < 8; j++) {
    int s, m;
    get_scale_min(sc, j, &s, &m);
    float dd = d * (float)s, dm = dmin * (float)m;
    for (int i = 0; i < 32; i++) {
      int l = dd != 0 ? nearest((x[32 * j + i] + dm) / dd) : 0;
      L[32 * j + i] = (uint8_t)(l < 0 ? 0 : l > nmax ? nmax : l);
    }
  }
  uint8_t *qh = nmax == 15 ? NULL : b + 16, *qs = b + (nmax == 15 ? 16 : 48);
  for (int c = 0; c < 4; c++)
    for (int l = 0; l < 32; l++) {
      int a = L[64 * c + l], h = L[64 * c + 32 + l];
      qs[32 * c + l] = (uint8_t)((a & 15) | ((h & 15) << 4));
      if (qh) qh[l] |= (uint8_t)(((a >> 4) << (2 * c)) | ((h >> 4) << (2 * c + 1)));
    }
}

/* Q6_K: 16 sub-blocks of 16 with int8 scales under one f16 super-scale. */
static void quantize_q6_k_block(const float *x, uint8_t *b) {
  float scales[16], max_scale = 0, amax = 0;
  for (int j = 0; j < 16; j++) {
    scales[j] = fit_scale_sym(16, 32, x + 16 * j);
    if (fabsf(scales[j]) > amax) { amax = fabsf(scales[j]); max_scale = scales[j]; }
  }
  memset(b, 0, 210);
  if (amax == 0) return;
  float iscale = -128.0f / max_scale;
  uint16_t hd = f32_to_f16(1 / iscale);
  put16(b + 208, hd);
  int8_t *sc = (int8_t *)(b + 192);
  for (int j = 0; j < 16; j++) {
    int v = nearest(iscale * scales[j]);
    sc[j] = (int8_t)(v > 127 ? 127 : v < -128 ? -128 : v);
  }
  float d = f16_to_f32(hd);
  uint8_t L[256];
  for (int j = 0; j < 16; j++) {
    float dd = d * (float)sc[j];
    for (int i = 0; i < 16; i++) {
      int l = dd != 0 ? nearest(x[16 * j + i] / dd) : 0;
      L[16 * j + i] = (uint8_t)((l < -32 ? -32 : l > 31 ? 31 : l) + 32);
    }
  }
  uint8_t *ql = b, *qh = b + 128;
  for (int h = 0; h < 2; h++)
    for (int l = 0; l < 32; l++) {
      int q1 = L[128 * h + l], q2 = L[128 * h + 32 + l], q3 = L[128 * h + 64 + l], q4 = L[128 * h + 96 + l];
      ql[64 * h + l] = (uint8_t)((q1 & 15) | ((q3 & 15) << 4));
      ql[64 * h + 32 + l] = (uint8_t)((q2 & 15) | ((q4 & 15) << 4));
      qh[32 * h + l] = (uint8_t)((q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) | ((q4 >> 4) << 6));
    }
}

/* ---- Generic quantizer, learned from the generated decoder ----------------------------------------
 * Probing the decoder (qt->dequant_row) finds, with no layout written here:
 *  - which bits each element owns alone (its code) and which bits several elements share (a register: the
 *    sub-block scales of k-quants); elements whose values the same shared bits change form a group;
 *  - the decode as a sum over the scalar float fields F_k: y_i = Σ_k F_k·σ_k(R_g)·ℓ_k,i(c_i), with σ the
 *    register's factor (1 without a group) and ℓ the code's level (any table, e.g. iq4_nl's). One field
 *    (the scale) has levels that vary with the code; at most one other (the offset) has constant ones.
 * Quantizing a block: for each group, a least-squares fit of scale (and offset) over a grid of candidate
 * scales with each element at its nearest level; then each float field from the largest fitted value and
 * its extreme register factor, stored (rounded) and read back; then each group's register by a search over
 * all its values; then every code as the level nearest x given the stored scales. Where there are no
 * registers and the levels are consecutive integers (q4_0, q4_1, q5_0, q5_1) the rule is ggml's instead,
 * byte-identical to llama.cpp's reference quantizers: symmetric d = (signed max)/(extreme level),
 * code = trunc(x/d − level_min + 0.5); affine d = (max − min)/(levels − 1), offset min,
 * code = trunc((x − min)/d + 0.5). One-element formats with one float field are conversions. */

enum { GEN_MAX_CODE_BITS = 8, GEN_MAX_REG_BITS = 16, GEN_MAX_FLOATS = 4 };

typedef struct {
  const qmoe_qtype_info *qt;
  const qmoe_qlayout *lay;
  int conversion;
  int nf;                             /* scalar float fields */
  const qmoe_qfield *fl[GEN_MAX_FLOATS];
  int ks, km;                         /* index in fl of the scale field, of the offset field (−1: none) */
  int *nbits;                         /* [element] code bits */
  int (*bitpos)[GEN_MAX_CODE_BITS];   /* [element][k] = byte·8 + bit */
  int ncode;                          /* 1 << max nbits */
  int *group;                         /* [element] group, −1: none */
  int ngroups, nrb;                   /* groups, register bits of each (all groups alike) */
  int (*regpos)[GEN_MAX_REG_BITS];    /* [group][k] */
  float *lev_s;                       /* [element·ncode + c]: ℓ_s (code c ≥ 1 << nbits: unused) */
  float *lev_m;                       /* [element]: ℓ_m (constant in the code) */
  float *sig_s, *sig_m;               /* [group·nreg + R]: σ_s, σ_m; nreg = 1 << nrb */
  int ggml_flat;                      /* no registers, consecutive integer levels: ggml's rule */
  int lmin, lmax;                     /* ggml_flat: level range */
  int *code_of;                       /* ggml_flat: [element·nlevels + level − lmin] */
} gen_plan;

static int gen_unsupported(const qmoe_qtype_info *qt, const char *why) {
  qmoe_set_error("qmoe_quantize_row: the generic quantizer cannot derive a rule for %s from its decoder: %s "
                 "(name a strategy in its contract's quantizer section, or see docs/quant.md)", qt->name, why);
  return QMOE_EUNSUPPORTED;
}

static void gen_free(gen_plan *p) {
  free(p->nbits);
  free(p->bitpos);
  free(p->group);
  free(p->regpos);
  free(p->lev_s);
  free(p->lev_m);
  free(p->sig_s);
  free(p->sig_m);
  free(p->code_of);
  memset(p, 0, sizeof *p);
}

static void set_bit(uint8_t *b, int pos, int v) {
  if (v) b[pos / 8] |= (uint8_t)(1u << (pos % 8));
  else b[pos / 8] &= (uint8_t)~(1u << (pos % 8));
}
static int get_bit(const uint8_t *b, int pos) { return (b[pos / 8] >> (pos % 8)) & 1; }

/* Sets every float field: field FI to V1, the others to V0 (FI −1: all V0). */
static void gen_floats(const gen_plan *p, uint8_t *b, int fi, float v1, float v0) {
  for (int k = 0; k < p->nf; k++) put_float_field(b, p->fl[k], k == fi ? v1 : v0);
}
static void gen_codes(const gen_plan *p, uint8_t *b, int c) {
  for (int i = 0; i < p->qt->block_elements; i++)
    for (int j = 0; j < p->nbits[i]; j++) set_bit(b, p->bitpos[i][j], (c >> j) & 1);
}
static void gen_regs(const gen_plan *p, uint8_t *b, int r) {
  for (int g = 0; g < p->ngroups; g++)
    for (int j = 0; j < p->nrb; j++) set_bit(b, p->regpos[g][j], (r >> j) & 1);
}

/* Elements whose decoded value differs between Y0 and Y (bit patterns). */
static int changed(const float *y0, const float *y, int n, int *first) {
  int c = 0;
  for (int i = 0; i < n; i++)
    if (f32_bits(y0[i]) != f32_bits(y[i])) {
      if (!c) *first = i;
      c++;
    }
  return c;
}

static int gen_build(gen_plan *p, const qmoe_qtype_info *qt) {
  memset(p, 0, sizeof *p);
  p->qt = qt;
  p->ks = p->km = -1;
  p->lay = qmoe_qlayout_by_id(qt->ggml_type);
  if (!p->lay) return gen_unsupported(qt, "no block layout in the qtype table");
  const qmoe_qlayout *lay = p->lay;
  for (int k = 0; k < lay->nfields; k++) {
    if (!is_float_field(&lay->fields[k])) continue;
    if (lay->fields[k].count != 1) return gen_unsupported(qt, "a float field is an array");
    if (p->nf == GEN_MAX_FLOATS) return gen_unsupported(qt, "too many float fields");
    p->fl[p->nf++] = &lay->fields[k];
  }
  if (p->nf == 1 && lay->nfields == 1 && qt->block_elements == 1) {
    p->conversion = 1;
    return 0;
  }
  if (p->nf == 0) return gen_unsupported(qt, "no float scale field");
  int be = qt->block_elements, bb = qt->block_bytes, rc = 0;
  uint8_t *blk = calloc((size_t)bb, 1), *base = calloc((size_t)bb, 1);
  float *y0 = malloc(sizeof(float) * (size_t)be), *y = malloc(sizeof(float) * (size_t)be);
  int *infl_first = malloc(sizeof(int) * (size_t)bb * 8), *infl_n = calloc((size_t)bb * 8, sizeof(int));
  p->nbits = calloc((size_t)be, sizeof *p->nbits);
  p->bitpos = calloc((size_t)be, sizeof *p->bitpos);
  p->group = malloc(sizeof(int) * (size_t)be);
  if (!blk || !base || !y0 || !y || !infl_first || !infl_n || !p->nbits || !p->bitpos || !p->group) {
    rc = QMOE_EINVAL;
    qmoe_set_error("qmoe_quantize_row: out of memory");
    goto out;
  }
  /* 1. What each bit outside the float fields changes, flipped from the all-ones state (every float field
   *    1): scales and levels are then non-zero in every format qmoe knows. */
  for (int k = 0; k < lay->nfields; k++)
    if (!is_float_field(&lay->fields[k])) memset(base + lay->fields[k].offset, 0xFF, (size_t)(lay->fields[k].count * field_size(&lay->fields[k])));
  gen_floats(p, base, -1, 0, 1.0f);
  qt->dequant_row(base, y0, be);
  for (int i = 0; i < be; i++) p->group[i] = -1;
  for (int k = 0; k < lay->nfields; k++) {
    const qmoe_qfield *f = &lay->fields[k];
    if (is_float_field(f)) continue;
    for (int bit = 0; bit < f->count * field_size(f) * 8; bit++) {
      int pos = f->offset * 8 + bit;
      memcpy(blk, base, (size_t)bb);
      set_bit(blk, pos, !get_bit(base, pos));
      qt->dequant_row(blk, y, be);
      infl_n[pos] = changed(y0, y, be, &infl_first[pos]);
      if (infl_n[pos] == 1) {
        int owner = infl_first[pos];
        if (p->nbits[owner] == GEN_MAX_CODE_BITS) { rc = gen_unsupported(qt, "an element owns more than 8 bits"); goto out; }
        p->bitpos[owner][p->nbits[owner]++] = pos;
      }
    }
  }
  int maxbits = 0;
  for (int i = 0; i < be; i++) {
    if (p->nbits[i] == 0) { rc = gen_unsupported(qt, "an element owns no bits"); goto out; }
    if (p->nbits[i] > maxbits) maxbits = p->nbits[i];
  }
  p->ncode = 1 << maxbits;
  /* 2. Shared bits: those changing the same set of elements form one group's register. */
  for (int pos = 0; pos < bb * 8; pos++) {
    if (infl_n[pos] < 2) continue;
    memcpy(blk, base, (size_t)bb);
    set_bit(blk, pos, !get_bit(base, pos));
    qt->dequant_row(blk, y, be);
    int g = p->group[infl_first[pos]];
    if (g < 0) { /* a new group: its elements must not belong to another one */
      g = p->ngroups;
      for (int i = 0; i < be; i++)
        if (f32_bits(y0[i]) != f32_bits(y[i])) {
          if (p->group[i] >= 0) { rc = gen_unsupported(qt, "an element depends on two groups of shared bits"); goto out; }
          p->group[i] = g;
        }
      p->ngroups++;
      int (*rp)[GEN_MAX_REG_BITS] = realloc(p->regpos, sizeof *rp * (size_t)p->ngroups);
      if (!rp) { rc = QMOE_EINVAL; qmoe_set_error("qmoe_quantize_row: out of memory"); goto out; }
      p->regpos = rp;
    }
    for (int i = 0; i < be; i++)
      if ((f32_bits(y0[i]) != f32_bits(y[i])) != (p->group[i] == g)) { rc = gen_unsupported(qt, "shared bits change overlapping sets of elements"); goto out; }
    int nb = 0; /* this group's bits before POS */
    for (int q = 0; q < pos; q++) if (infl_n[q] >= 2 && p->group[infl_first[q]] == g) nb++;
    if (nb >= GEN_MAX_REG_BITS) { rc = gen_unsupported(qt, "a group has more than 16 shared bits"); goto out; }
    p->regpos[g][nb] = pos;
    if (g == 0) p->nrb = nb + 1;
    else if (nb + 1 > p->nrb) { rc = gen_unsupported(qt, "groups have different numbers of shared bits"); goto out; }
  }
  for (int g = 1; g < p->ngroups; g++) { /* every group as many register bits as group 0 */
    int nb = 0;
    for (int q = 0; q < bb * 8; q++) if (infl_n[q] >= 2 && p->group[infl_first[q]] == g) nb++;
    if (nb != p->nrb) { rc = gen_unsupported(qt, "groups have different numbers of shared bits"); goto out; }
  }
  int nreg = 1 << p->nrb, rref = nreg - 1;
  /* 3. Levels ℓ_k,i(c) of each float field alone (registers all ones), and which field is the scale. */
  float *lev = malloc(sizeof(float) * (size_t)p->nf * (size_t)be * (size_t)p->ncode);
  if (!lev) { rc = QMOE_EINVAL; qmoe_set_error("qmoe_quantize_row: out of memory"); goto out; }
  for (int k = 0; k < p->nf; k++) {
    memcpy(blk, base, (size_t)bb);
    gen_floats(p, blk, k, 1.0f, 0.0f);
    for (int c = 0; c < p->ncode; c++) {
      gen_codes(p, blk, c);
      qt->dequant_row(blk, y, be);
      for (int i = 0; i < be; i++) lev[((size_t)k * be + i) * p->ncode + c] = y[i];
    }
    int varies = 0;
    for (int i = 0; i < be && !varies; i++)
      for (int c = 1; c < (1 << p->nbits[i]); c++)
        if (lev[((size_t)k * be + i) * p->ncode + c] != lev[((size_t)k * be + i) * p->ncode]) { varies = 1; break; }
    if (varies) {
      if (p->ks >= 0) { free(lev); rc = gen_unsupported(qt, "two float fields both scale the codes"); goto out; }
      p->ks = k;
    } else {
      if (p->km >= 0) { free(lev); rc = gen_unsupported(qt, "more than one offset field"); goto out; }
      p->km = k;
    }
  }
  if (p->ks < 0) { free(lev); rc = gen_unsupported(qt, "no float field scales the codes"); goto out; }
  p->lev_s = malloc(sizeof(float) * (size_t)be * (size_t)p->ncode);
  p->lev_m = calloc((size_t)be, sizeof(float));
  if (!p->lev_s || !p->lev_m) { free(lev); rc = QMOE_EINVAL; qmoe_set_error("qmoe_quantize_row: out of memory"); goto out; }
  memcpy(p->lev_s, lev + (size_t)p->ks * be * p->ncode, sizeof(float) * (size_t)be * (size_t)p->ncode);
  if (p->km >= 0)
    for (int i = 0; i < be; i++) p->lev_m[i] = lev[((size_t)p->km * be + i) * p->ncode];
  free(lev);
  /* The decode must be the sum of the fields' terms: check both fields at once. */
  if (p->km >= 0) {
    memcpy(blk, base, (size_t)bb);
    gen_floats(p, blk, -1, 0, 1.0f);
    gen_codes(p, blk, 1);
    qt->dequant_row(blk, y, be);
    for (int i = 0; i < be; i++)
      if (y[i] != p->lev_s[(size_t)i * p->ncode + 1] + p->lev_m[i]) { rc = gen_unsupported(qt, "the decode is not a sum of one term per float field"); goto out; }
  }
  /* 4. Register factors σ_k(R) = term(R) / term(all ones), with the code whose scale level is largest. */
  int cref = 0;
  for (int c = 0; c < (1 << p->nbits[0]); c++)
    if (fabsf(p->lev_s[c]) > fabsf(p->lev_s[cref])) cref = c;
  p->sig_s = malloc(sizeof(float) * (size_t)(p->ngroups ? p->ngroups : 1) * (size_t)nreg);
  p->sig_m = malloc(sizeof(float) * (size_t)(p->ngroups ? p->ngroups : 1) * (size_t)nreg);
  if (!p->sig_s || !p->sig_m) { rc = QMOE_EINVAL; qmoe_set_error("qmoe_quantize_row: out of memory"); goto out; }
  for (int g = 0; g < (p->ngroups ? p->ngroups : 1) * nreg; g++) p->sig_s[g] = p->sig_m[g] = 1.0f;
  for (int t = 0; t < 2 && p->ngroups; t++) {
    int k = t == 0 ? p->ks : p->km;
    if (k < 0) continue;
    float *sig = t == 0 ? p->sig_s : p->sig_m;
    memcpy(blk, base, (size_t)bb);
    gen_floats(p, blk, k, 1.0f, 0.0f);
    gen_codes(p, blk, cref);
    for (int r = 0; r < nreg; r++) {
      gen_regs(p, blk, r);
      qt->dequant_row(blk, y, be);
      for (int i = 0; i < be; i++) {
        if (p->group[i] < 0) { rc = gen_unsupported(qt, "some elements have shared bits and some do not"); goto out; }
        float ref = t == 0 ? p->lev_s[(size_t)i * p->ncode + (cref & ((1 << p->nbits[i]) - 1))] : p->lev_m[i];
        if (ref == 0) { rc = gen_unsupported(qt, "a level is zero where the register is all ones"); goto out; }
        float v = y[i] / ref;
        float *slot = &sig[(size_t)p->group[i] * nreg + r];
        if (r == rref && v != 1.0f) { rc = gen_unsupported(qt, "the register factor is not separable from the code's level"); goto out; }
        *slot = v; /* every element of the group gives the same factor: checked on the codes below */
      }
    }
  }
  /* Separability spot check: term(R, c) = σ(R)·ℓ(c) for a spread of registers and codes. */
  for (int r = 0; r < nreg && p->ngroups; r += nreg > 16 ? nreg / 16 + 1 : 1) {
    for (int c = 0; c < p->ncode; c += p->ncode > 8 ? p->ncode / 8 + 1 : 1) {
      memcpy(blk, base, (size_t)bb);
      gen_floats(p, blk, p->ks, 1.0f, 0.0f);
      gen_codes(p, blk, c);
      gen_regs(p, blk, r);
      qt->dequant_row(blk, y, be);
      for (int i = 0; i < be; i++) {
        int ci = c & ((1 << p->nbits[i]) - 1);
        float want = p->sig_s[(size_t)p->group[i] * nreg + r] * p->lev_s[(size_t)i * p->ncode + ci];
        if (fabsf(y[i] - want) > 1e-6f * (fabsf(want) + 1)) { rc = gen_unsupported(qt, "the decode is not register factor × code level"); goto out; }
      }
    }
  }
  /* 5. ggml's rule applies where there are no registers and every element's levels are consecutive ints. */
  if (p->ngroups == 0) {
    int ok = 1;
    p->lmin = 1 << 30;
    p->lmax = -(1 << 30);
    for (int i = 0; i < be && ok; i++)
      for (int c = 0; c < (1 << p->nbits[i]); c++) {
        float v = p->lev_s[(size_t)i * p->ncode + c];
        if (!(v == floorf(v)) || fabsf(v) > 4096) { ok = 0; break; }
        if ((int)v < p->lmin) p->lmin = (int)v;
        if ((int)v > p->lmax) p->lmax = (int)v;
      }
    if (ok && p->km >= 0)
      for (int i = 0; i < be; i++) if (p->lev_m[i] != 1.0f && p->lev_m[i] != -1.0f) ok = 0;
    int nl = ok ? p->lmax - p->lmin + 1 : 0;
    if (ok) {
      p->code_of = malloc(sizeof(int) * (size_t)be * (size_t)nl);
      if (!p->code_of) { rc = QMOE_EINVAL; qmoe_set_error("qmoe_quantize_row: out of memory"); goto out; }
      for (long k = 0; k < (long)be * nl; k++) p->code_of[k] = -1;
      for (int i = 0; i < be; i++)
        for (int c = 0; c < (1 << p->nbits[i]); c++) {
          int lv = (int)p->lev_s[(size_t)i * p->ncode + c];
          if (p->code_of[(long)i * nl + lv - p->lmin] < 0) p->code_of[(long)i * nl + lv - p->lmin] = c;
        }
      for (long k = 0; k < (long)be * nl; k++)
        if (p->code_of[k] < 0) { ok = 0; break; }
    }
    p->ggml_flat = ok;
  }
out:
  free(blk);
  free(base);
  free(y0);
  free(y);
  free(infl_first);
  free(infl_n);
  if (rc) gen_free(p);
  return rc;
}

/* ggml's rule for registerless formats with consecutive integer levels. */
static void ggml_flat_block(const gen_plan *p, const float *x, uint8_t *b) {
  int be = p->qt->block_elements, nl = p->lmax - p->lmin + 1;
  const qmoe_qfield *mul = p->fl[p->ks], *add = p->km >= 0 ? p->fl[p->km] : NULL;
  float d, base, id;
  if (!add) {
    /* Symmetric: the largest |x| maps to the level of largest magnitude (ggml's q4_0/q5_0 rule). */
    float amax, max = signed_absmax(x, be, &amax);
    int lext = -p->lmin > p->lmax ? p->lmin : p->lmax;
    d = max / (float)lext;
    if (-p->lmin == p->lmax) d = amax / (float)p->lmax;
    id = d != 0 ? 1.0f / d : 0.0f;
    base = 0;
    put_float_field(b, mul, d);
  } else {
    /* Affine: min maps to the lowest level (ggml's q4_1/q5_1 rule). */
    float lo = x[0], hi = x[0];
    for (int i = 1; i < be; i++) {
      if (x[i] < lo) lo = x[i];
      if (x[i] > hi) hi = x[i];
    }
    d = (hi - lo) / (float)(nl - 1);
    id = d != 0 ? 1.0f / d : 0.0f;
    base = lo;
    put_float_field(b, mul, d);
    put_float_field(b, add, (lo - d * (float)p->lmin) * p->lev_m[0]);
  }
  for (int i = 0; i < be; i++) {
    /* k = trunc(t + 0.5) with t >= −0.5: round half up, computed in f32 as ggml does. */
    float t = add ? (x[i] - base) * id : x[i] * id + (float)(-p->lmin);
    int k = (int)(t + 0.5f);
    k = k < 0 ? 0 : k > nl - 1 ? nl - 1 : k;
    int c = p->code_of[(long)i * nl + k];
    for (int j = 0; j < p->nbits[i]; j++)
      if ((c >> j) & 1) set_bit(b, p->bitpos[i][j], 1);
  }
}

/* The code of element I whose value a·ℓ(c) + m is nearest X. */
static int nearest_code(const gen_plan *p, int i, float a, float m, float x) {
  const float *l = p->lev_s + (size_t)i * p->ncode;
  int best = 0;
  float be = INFINITY;
  for (int c = 0; c < (1 << p->nbits[i]); c++) {
    float e = fabsf(a * l[c] + m - x);
    if (e < be) { be = e; best = c; }
  }
  return best;
}

/* Least-squares fit of x[e] ≈ a·ℓ_e(c_e) + m·ℓm_e over the elements EL[0..n) (m only when OFFSET), codes at
 * the nearest level, over a grid of candidate scales around the extreme ones. Returns the squared error. */
static double fit_group(const gen_plan *p, const int *el, int n, const float *x, int offset, float *a_out, float *m_out) {
  float lo = INFINITY, hi = -INFINITY, xlo = INFINITY, xhi = -INFINITY, amax = 0, xext = 0;
  const float *l0 = p->lev_s + (size_t)el[0] * p->ncode;
  for (int c = 0; c < (1 << p->nbits[el[0]]); c++) {
    if (l0[c] < lo) lo = l0[c];
    if (l0[c] > hi) hi = l0[c];
  }
  for (int e = 0; e < n; e++) {
    float v = x[el[e]];
    if (v < xlo) xlo = v;
    if (v > xhi) xhi = v;
    if (fabsf(v) > amax) { amax = fabsf(v); xext = v; }
  }
  *a_out = 0;
  *m_out = 0;
  double best = INFINITY;
  if (amax == 0) return 0;
  float span = hi - lo, step = span / (float)((1 << p->nbits[el[0]]) - 1);
  for (int side = 0; side < 2; side++)
    for (int k = -8; k <= 8; k++) {
      float a, m = 0;
      if (offset) { /* xlo maps to the lowest level, xhi near the highest */
        float den = span + 0.1f * (float)k * step;
        if (den <= 0 || xhi == xlo) continue;
        a = (xhi - xlo) / den;
        m = (xlo - a * lo) / p->lev_m[el[0]];
        if (side) continue;
      } else {
        float lext = side ? lo : hi;
        float den = lext + 0.1f * (float)k * step * (lext < 0 ? -1.0f : 1.0f);
        if (den == 0) continue;
        a = xext / den;
      }
      /* codes at this candidate, then the least-squares a (and m) for them */
      double sl2 = 0, sxl = 0, sm2 = 0, slm = 0, sxm = 0;
      for (int e = 0; e < n; e++) {
        int i = el[e];
        float lm = p->lev_m[i];
        float l = p->lev_s[(size_t)i * p->ncode + nearest_code(p, i, a, m * lm, x[i])];
        sl2 += (double)l * l, sxl += (double)x[i] * l;
        sm2 += (double)lm * lm, slm += (double)l * lm, sxm += (double)x[i] * lm;
      }
      double fa, fm = 0;
      if (offset) {
        double D = sl2 * sm2 - slm * slm;
        if (D <= 0) continue;
        fa = (sxl * sm2 - sxm * slm) / D;
        fm = (sl2 * sxm - slm * sxl) / D;
      } else {
        if (sl2 <= 0) continue;
        fa = sxl / sl2;
      }
      double err = 0;
      for (int e = 0; e < n; e++) {
        int i = el[e];
        float mm = (float)fm * p->lev_m[i];
        float v = (float)fa * p->lev_s[(size_t)i * p->ncode + nearest_code(p, i, (float)fa, mm, x[i])] + mm;
        err += ((double)v - x[i]) * ((double)v - x[i]);
      }
      if (err < best) {
        best = err;
        *a_out = (float)fa;
        *m_out = (float)fm;
      }
    }
  return best;
}

/* Stores float field F as V and returns the value the decoder reads back. */
static float store_float(uint8_t *b, const qmoe_qfield *f, float v) {
  put_float_field(b, f, v);
  const uint8_t *q = b + f->offset;
  if (f->type == QMOE_QF_F16) return f16_to_f32((uint16_t)(q[0] | q[1] << 8));
  if (f->type == QMOE_QF_BF16) { uint32_t u = (uint32_t)(q[0] | q[1] << 8) << 16; float r; memcpy(&r, &u, 4); return r; }
  return v;
}

/* The float field value that maps the largest target T_EXT onto the register factor of largest magnitude. */
static float super_value(const float *sig, int nreg, float t_ext) {
  float vext = 0;
  for (int r = 0; r < nreg; r++)
    if (fabsf(sig[r]) > fabsf(vext) || (fabsf(sig[r]) == fabsf(vext) && sig[r] > vext)) vext = sig[r];
  return vext != 0 ? t_ext / vext : 0;
}

static void gen_block(const gen_plan *p, const float *x, uint8_t *b) {
  int be = p->qt->block_elements;
  memset(b, 0, (size_t)p->qt->block_bytes);
  if (p->conversion) {
    put_float_field(b, p->fl[0], x[0]);
    return;
  }
  if (p->ggml_flat) {
    ggml_flat_block(p, x, b);
    return;
  }
  int ng = p->ngroups ? p->ngroups : 1, nreg = 1 << p->nrb, offset = p->km >= 0;
  int el[1024];
  float a[1024], m[1024], wa[1024], wm[1024];
  for (int g = 0; g < ng; g++) { /* 1. per group: real-valued scale and offset */
    int n = 0;
    for (int i = 0; i < be; i++) if (p->ngroups == 0 || p->group[i] == g) el[n++] = i;
    fit_group(p, el, n, x, offset, &a[g], &m[g]);
    double sl2 = 0;
    for (int e = 0; e < n; e++) { /* Σ over the elements of their mean square level: the weight of a scale error */
      const float *l = p->lev_s + (size_t)el[e] * p->ncode;
      for (int c = 0; c < (1 << p->nbits[el[e]]); c++) sl2 += (double)l[c] * l[c] / (1 << p->nbits[el[e]]);
    }
    wa[g] = (float)sl2;
    wm[g] = (float)n;
  }
  /* 2. float fields from the extreme targets; 3. each group's register by search */
  float ta = 0, tm = 0;
  for (int g = 0; g < ng; g++) {
    if (fabsf(a[g]) > fabsf(ta)) ta = a[g];
    if (fabsf(m[g]) > fabsf(tm)) tm = m[g];
  }
  float fs = store_float(b, p->fl[p->ks], p->ngroups ? super_value(p->sig_s, nreg, ta) : ta);
  float fm = offset ? store_float(b, p->fl[p->km], p->ngroups ? super_value(p->sig_m, nreg, tm) : tm) : 0;
  int reg[1024];
  for (int g = 0; g < p->ngroups; g++) {
    const float *ss = p->sig_s + (size_t)g * nreg, *sm = p->sig_m + (size_t)g * nreg;
    double best = INFINITY;
    reg[g] = 0;
    for (int r = 0; r < nreg; r++) {
      double da = (double)fs * ss[r] - a[g], dm = offset ? (double)fm * sm[r] - m[g] : 0;
      double e = wa[g] * da * da + wm[g] * dm * dm;
      if (e < best) { best = e; reg[g] = r; }
    }
    for (int j = 0; j < p->nrb; j++) set_bit(b, p->regpos[g][j], (reg[g] >> j) & 1);
  }
  /* 4. codes against the stored values, as the decoder evaluates them (the register factors are exact). */
  for (int i = 0; i < be; i++) {
    int g = p->group[i];
    float sa = p->ngroups ? fs * p->sig_s[(size_t)g * nreg + reg[g]] : fs;
    float sm = offset ? (p->ngroups ? fm * p->sig_m[(size_t)g * nreg + reg[g]] : fm) * p->lev_m[i] : 0;
    int c = nearest_code(p, i, sa, sm, x[i]);
    for (int j = 0; j < p->nbits[i]; j++) set_bit(b, p->bitpos[i][j], (c >> j) & 1);
  }
}

/* Plans are built once per qtype (probing takes thousands of decodes) and kept for the process. */
static pthread_mutex_t plan_lock = PTHREAD_MUTEX_INITIALIZER;
static struct { const qmoe_qtype_info *qt; gen_plan plan; } plan_cache[64];
static int plan_count;

static int gen_plan_for(const qmoe_qtype_info *qt, const gen_plan **out) {
  pthread_mutex_lock(&plan_lock);
  for (int k = 0; k < plan_count; k++)
    if (plan_cache[k].qt == qt) {
      *out = &plan_cache[k].plan;
      pthread_mutex_unlock(&plan_lock);
      return 0;
    }
  int rc = 0;
  if (plan_count == (int)(sizeof plan_cache / sizeof plan_cache[0])) {
    qmoe_set_error("qmoe_quantize_row: too many qtypes");
    rc = QMOE_EINVAL;
  } else if (qt->block_elements > 1024) {
    rc = gen_unsupported(qt, "blocks of more than 1024 elements");
  } else if ((rc = gen_build(&plan_cache[plan_count].plan, qt)) == 0) {
    plan_cache[plan_count].qt = qt;
    *out = &plan_cache[plan_count++].plan;
  }
  pthread_mutex_unlock(&plan_lock);
  return rc;
}

/* ---- Random valid blocks --------------------------------------------------------------------------- */

static uint64_t splitmix(uint64_t *s) {
  uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

int qmoe_quant_random_blocks(int ggml_type, uint64_t seed, void *dst, int64_t n_elements) {
  const qmoe_qtype_info *qt = qmoe_qtype_by_id(ggml_type);
  if (!qt) return QMOE_EUNSUPPORTED;
  const qmoe_qlayout *lay = qmoe_qlayout_by_id(ggml_type);
  if (!dst || n_elements < 0 || n_elements % qt->block_elements != 0 || !lay || qt->block_elements > 4096) {
    qmoe_set_error("qmoe_quant_random_blocks(%s): n = %lld must be a non-negative multiple of %d and dst non-NULL",
                   qt->name, (long long)n_elements, qt->block_elements);
    return QMOE_EINVAL;
  }
  float y[4096];
  uint64_t s = seed;
  for (int64_t k = 0; k < n_elements / qt->block_elements; k++) {
    uint8_t *b = (uint8_t *)dst + k * qt->block_bytes;
    int ok = 0;
    for (int attempt = 0; attempt < 1000 && !ok; attempt++) {
      for (int i = 0; i < qt->block_bytes; i++) b[i] = (uint8_t)splitmix(&s);
      for (int f = 0; f < lay->nfields; f++) {
        if (!is_float_field(&lay->fields[f])) continue;
        for (int e = 0; e < lay->fields[f].count; e++) {
          /* moderate: |v| in [2^-8, 1) for scales, [2^-4, 4) for plain values, either sign */
          uint64_t r = splitmix(&s);
          float v = ldexpf(1.0f + (float)(r & 0xFFFF) / 65536.0f, (int)((r >> 16) % 6) - (qt->block_elements == 1 ? 4 : 9));
          if ((r >> 32) & 1) v = -v;
          qmoe_qfield one = lay->fields[f];
          one.offset += e * field_size(&one);
          put_float_field(b, &one, v);
        }
      }
      qt->dequant_row(b, y, qt->block_elements);
      int finite = 1, nonzero = 0;
      for (int i = 0; i < qt->block_elements; i++) {
        if (!isfinite(y[i])) finite = 0;
        if (y[i] != 0) nonzero = 1;
      }
      ok = finite && nonzero;
    }
    if (!ok) {
      qmoe_set_error("qmoe_quant_random_blocks(%s): no random block decoded to finite values, not all zero", qt->name);
      return QMOE_EUNSUPPORTED;
    }
  }
  return 0;
}

/* ---- Entry point ---------------------------------------------------------------------------------- */

typedef void (*block_fn)(const float *x, uint8_t *b);
static void q4_k_block(const float *x, uint8_t *b) { quantize_q45_k_block(x, b, 15); }
static void q5_k_block(const float *x, uint8_t *b) { quantize_q45_k_block(x, b, 31); }

/* Named strategies a contract's quantizer.strategy may choose instead of "generic" (docs/quant.md). Each
 * encodes blocks of the layout of the format it is named after; test_quant checks every contract's name. */
static const struct { const char *name; int block_elements, block_bytes; block_fn fn; } STRATEGIES[] = {
  { "ggml_q8_0", 32, 34, quantize_q8_0_block },
  { "ggml_q8_k", 256, 292, quantize_q8_k_block },
  { "kquant_q4_k", 256, 144, q4_k_block },
  { "kquant_q5_k", 256, 176, q5_k_block },
  { "kquant_q6_k", 256, 210, quantize_q6_k_block },
};

int qmoe_quantize_row(int ggml_type, const float *src, void *dst, int64_t n) {
  const qmoe_qtype_info *qt = qmoe_qtype_by_id(ggml_type);
  if (!qt) return QMOE_EUNSUPPORTED;
  if (!src || !dst || n < 0 || n % qt->block_elements != 0) {
    qmoe_set_error("qmoe_quantize_row(%s): n = %lld must be a non-negative multiple of %d and src, dst non-NULL",
                   qt->name, (long long)n, qt->block_elements);
    return QMOE_EINVAL;
  }
  int64_t nb = n / qt->block_elements;
  uint8_t *out = (uint8_t *)dst;
  int be = qt->block_elements, bb = qt->block_bytes;
  if (!(qt->block_elements == 1)) { /* conversions carry inf/nan through; quantizers need finite input */
    for (int64_t i = 0; i < n; i++)
      if (!isfinite(src[i])) {
        qmoe_set_error("qmoe_quantize_row(%s): src[%lld] = %g is not finite", qt->name, (long long)i, (double)src[i]);
        return QMOE_EINVAL;
      }
  }
  const char *strategy = qt->quantizer ? qt->quantizer : "generic";
  if (strcmp(strategy, "generic") != 0) {
    for (size_t k = 0; k < sizeof STRATEGIES / sizeof STRATEGIES[0]; k++) {
      if (strcmp(STRATEGIES[k].name, strategy) != 0) continue;
      if (STRATEGIES[k].block_elements != be || STRATEGIES[k].block_bytes != bb) {
        qmoe_set_error("qmoe_quantize_row(%s): strategy %s encodes %d-element blocks of %d bytes, not %d of %d", qt->name,
                       strategy, STRATEGIES[k].block_elements, STRATEGIES[k].block_bytes, be, bb);
        return QMOE_EINVAL;
      }
      for (int64_t k2 = 0; k2 < nb; k2++) STRATEGIES[k].fn(src + k2 * be, out + k2 * bb);
      return 0;
    }
    qmoe_set_error("qmoe_quantize_row(%s): unknown quantizer strategy '%s' (contracts/quant/%s.yaml)", qt->name, strategy,
                   qt->name);
    return QMOE_EUNSUPPORTED;
  }
  const gen_plan *p;
  int rc = gen_plan_for(qt, &p);
  if (rc) return rc;
  for (int64_t k = 0; k < nb; k++) gen_block(p, src + k * be, out + k * bb);
  return 0;
}
