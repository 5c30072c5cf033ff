/* quant.c: the reference quantizers behind qmoe_quantize_row. Encoding only: every value is decoded by
 * the code generated from contracts/quant/<q>.yaml (qmoe_qtype_info.dequant_row), never by hand here. */
#include <math.h>
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

/* ---- Q8_0, Q8_K: ggml's reference rules (docs: shared/reference/quant-formats.md) ---------------- */

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

/* ---- Generic quantizer for "flat" formats, learned from the generated decoder ---------------------
 * A format is flat when every bit outside its float fields belongs to exactly one element (so each element
 * stores a small code), one scalar float field multiplies the code's level and at most one other adds a
 * constant: y = d·level(code) ± m. Probing the decoder finds the bits of each element, the role of each
 * float field and each code's level; no layout is written here. q4_0, q4_1, q5_0 and q5_1 are flat; the
 * rule then is ggml's (symmetric: d = max/level_min and codes trunc(x/d − level_min + 0.5); affine:
 * d = (max − min)/(levels − 1), m = min and codes trunc((x − min)/d + 0.5)), so the output is byte-identical
 * to llama.cpp's reference quantizers for those formats. One-element formats with a single float field
 * (f32, f16, bf16) are conversions. */

#define FLAT_MAX_BITS 8
typedef struct {
  const qmoe_qtype_info *qt;
  const qmoe_qlayout *lay;
  int conversion;                  /* one float field, one element: plain conversion */
  const qmoe_qfield *mul, *add;    /* scale field and optional offset field */
  float add_sign;                  /* +1 or −1: the offset's weight */
  int lmin, lmax;                  /* code levels, contiguous */
  int *nbits;                      /* [element] bits owned */
  int (*bitpos)[FLAT_MAX_BITS];    /* [element][k] = byte * 8 + bit */
  int *code_of;                    /* [element * nlevels + level − lmin] = code, −1 if unreachable */
} flat_plan;

static void flat_free(flat_plan *p) {
  free(p->nbits);
  free(p->bitpos);
  free(p->code_of);
}

static void set_floats(uint8_t *blk, const qmoe_qlayout *lay, const qmoe_qfield *one, float v_one, float v_rest) {
  for (int k = 0; k < lay->nfields; k++)
    if (is_float_field(&lay->fields[k])) put_float_field(blk, &lay->fields[k], &lay->fields[k] == one ? v_one : v_rest);
}

static int flat_unsupported(const qmoe_qtype_info *qt, const char *why) {
  qmoe_set_error("qmoe_quantize_row: no quantizer for %s: %s (the generic quantizer handles formats where each element "
                 "owns its own bits under one f16/f32 scale and an optional offset)", qt->name, why);
  return QMOE_EUNSUPPORTED;
}

static int flat_build(flat_plan *p, const qmoe_qtype_info *qt) {
  memset(p, 0, sizeof *p);
  p->qt = qt;
  p->lay = qmoe_qlayout_by_id(qt->ggml_type);
  if (!p->lay) return flat_unsupported(qt, "no block layout in the qtype table");
  const qmoe_qlayout *lay = p->lay;
  int nf = 0;
  const qmoe_qfield *fl[2] = { NULL, NULL };
  for (int k = 0; k < lay->nfields; k++) {
    if (!is_float_field(&lay->fields[k])) continue;
    if (lay->fields[k].count != 1) return flat_unsupported(qt, "a float field is an array");
    if (nf == 2) return flat_unsupported(qt, "more than two float fields");
    fl[nf++] = &lay->fields[k];
  }
  if (nf == 1 && lay->nfields == 1 && qt->block_elements == 1) {
    p->conversion = 1;
    p->mul = fl[0];
    return 0;
  }
  if (nf == 0) return flat_unsupported(qt, "no float scale field");
  int be = qt->block_elements, bb = qt->block_bytes;
  uint8_t *blk = calloc((size_t)bb, 1);
  float *y0 = malloc(sizeof(float) * (size_t)be), *y = malloc(sizeof(float) * (size_t)be);
  p->nbits = calloc((size_t)be, sizeof *p->nbits);
  p->bitpos = calloc((size_t)be, sizeof *p->bitpos);
  int rc = 0;
  if (!blk || !y0 || !y || !p->nbits || !p->bitpos) { rc = QMOE_EINVAL; qmoe_set_error("qmoe_quantize_row: out of memory"); goto out; }
  /* 1. Bit ownership, with every float field 1. */
  set_floats(blk, lay, NULL, 0, 1.0f);
  qt->dequant_row(blk, y0, be);
  for (int k = 0; k < lay->nfields && rc == 0; k++) {
    const qmoe_qfield *f = &lay->fields[k];
    if (is_float_field(f)) continue;
    int nbytes = f->count * field_size(f);
    for (int bit = 0; bit < nbytes * 8; bit++) {
      int pos = (f->offset * 8) + bit;
      blk[pos / 8] ^= (uint8_t)(1u << (pos % 8));
      qt->dequant_row(blk, y, be);
      blk[pos / 8] ^= (uint8_t)(1u << (pos % 8));
      int owner = -1, owners = 0;
      for (int i = 0; i < be; i++)
        if (f32_bits(y[i]) != f32_bits(y0[i])) { owner = i; owners++; }
      if (owners > 1) { rc = flat_unsupported(qt, "a bit outside the float fields changes several elements"); break; }
      if (owners == 1) {
        if (p->nbits[owner] == FLAT_MAX_BITS) { rc = flat_unsupported(qt, "an element owns more than 8 bits"); break; }
        p->bitpos[owner][p->nbits[owner]++] = pos;
      }
    }
  }
  if (rc) goto out;
  for (int i = 0; i < be; i++)
    if (p->nbits[i] == 0) { rc = flat_unsupported(qt, "an element owns no bits"); goto out; }
  /* 2. Roles of the float fields: the multiplier's contribution changes with the code. */
  for (int k = 0; k < nf; k++) {
    memset(blk, 0, (size_t)bb);
    set_floats(blk, lay, fl[k], 1.0f, 0.0f);
    qt->dequant_row(blk, y0, be);
    for (int j = 0; j < p->nbits[0]; j++) blk[p->bitpos[0][j] / 8] |= (uint8_t)(1u << (p->bitpos[0][j] % 8));
    qt->dequant_row(blk, y, be);
    if (y[0] != y0[0]) {
      if (p->mul) { rc = flat_unsupported(qt, "two float fields both scale the codes"); goto out; }
      p->mul = fl[k];
    } else {
      if (y0[0] != 1.0f && y0[0] != -1.0f) { rc = flat_unsupported(qt, "the offset field has a weight other than ±1"); goto out; }
      p->add = fl[k];
      p->add_sign = y0[0];
    }
  }
  if (!p->mul) { rc = flat_unsupported(qt, "no float field scales the codes"); goto out; }
  /* 3. Levels of every code of every element (scale 1, offset 0). */
  p->lmin = 1 << 30;
  p->lmax = -(1 << 30);
  memset(blk, 0, (size_t)bb);
  set_floats(blk, lay, p->mul, 1.0f, 0.0f);
  for (int pass = 0; pass < 2 && rc == 0; pass++) {
    int nl = p->lmax - p->lmin + 1;
    if (pass == 1) {
      p->code_of = malloc(sizeof(int) * (size_t)be * (size_t)nl);
      if (!p->code_of) { rc = QMOE_EINVAL; qmoe_set_error("qmoe_quantize_row: out of memory"); break; }
      for (long k = 0; k < (long)be * nl; k++) p->code_of[k] = -1;
    }
    for (int i = 0; i < be && rc == 0; i++) {
      for (int c = 0; c < (1 << p->nbits[i]); c++) {
        uint8_t save[FLAT_MAX_BITS];
        for (int j = 0; j < p->nbits[i]; j++) {
          int pos = p->bitpos[i][j];
          save[j] = blk[pos / 8];
          if ((c >> j) & 1) blk[pos / 8] |= (uint8_t)(1u << (pos % 8));
        }
        qt->dequant_row(blk, y, be);
        for (int j = p->nbits[i] - 1; j >= 0; j--) blk[p->bitpos[i][j] / 8] = save[j];
        float v = y[i];
        if (!(v == floorf(v)) || fabsf(v) > 4096) { rc = flat_unsupported(qt, "a code's level is not a small integer"); break; }
        int lv = (int)v;
        if (pass == 0) {
          if (lv < p->lmin) p->lmin = lv;
          if (lv > p->lmax) p->lmax = lv;
        } else if (p->code_of[(long)i * nl + lv - p->lmin] < 0) {
          p->code_of[(long)i * nl + lv - p->lmin] = c;
        }
      }
    }
  }
  if (rc == 0) {
    int nl = p->lmax - p->lmin + 1;
    for (long k = 0; k < (long)be * nl; k++)
      if (p->code_of[k] < 0) { rc = flat_unsupported(qt, "the levels of an element are not contiguous"); break; }
  }
out:
  free(blk);
  free(y0);
  free(y);
  if (rc) flat_free(p);
  return rc;
}

static void flat_block(const flat_plan *p, const float *x, uint8_t *b) {
  int be = p->qt->block_elements, nl = p->lmax - p->lmin + 1;
  memset(b, 0, (size_t)p->qt->block_bytes);
  if (p->conversion) {
    put_float_field(b, p->mul, x[0]);
    return;
  }
  float d, base, id;
  if (!p->add) {
    /* Symmetric: the largest |x| maps to the level of largest magnitude (ggml's q4_0/q5_0 rule). */
    float amax, max = signed_absmax(x, be, &amax);
    int lext = -p->lmin > p->lmax ? p->lmin : p->lmax;
    d = max / (float)lext;
    if (-p->lmin == p->lmax) d = amax / (float)p->lmax;
    id = d != 0 ? 1.0f / d : 0.0f;
    base = 0;
    put_float_field(b, p->mul, d);
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
    put_float_field(b, p->mul, d);
    put_float_field(b, p->add, (lo - d * (float)p->lmin) * p->add_sign);
  }
  for (int i = 0; i < be; i++) {
    /* k = trunc(t + 0.5) with t >= −0.5: round half up, computed in f32 as ggml does. */
    float t = p->add ? (x[i] - base) * id : x[i] * id + (float)(-p->lmin);
    int k = (int)(t + 0.5f);
    k = k < 0 ? 0 : k > nl - 1 ? nl - 1 : k;
    int c = p->code_of[(long)i * nl + k];
    for (int j = 0; j < p->nbits[i]; j++)
      if ((c >> j) & 1) b[p->bitpos[i][j] / 8] |= (uint8_t)(1u << (p->bitpos[i][j] % 8));
  }
}

/* ---- Entry point ---------------------------------------------------------------------------------- */

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
  switch (ggml_type) {
  case QMOE_GGML_Q8_0:
    for (int64_t k = 0; k < nb; k++) quantize_q8_0_block(src + k * be, out + k * bb);
    return 0;
  case QMOE_GGML_Q8_K:
    for (int64_t k = 0; k < nb; k++) quantize_q8_k_block(src + k * be, out + k * bb);
    return 0;
  case QMOE_GGML_Q4_K:
    for (int64_t k = 0; k < nb; k++) quantize_q45_k_block(src + k * be, out + k * bb, 15);
    return 0;
  case QMOE_GGML_Q5_K:
    for (int64_t k = 0; k < nb; k++) quantize_q45_k_block(src + k * be, out + k * bb, 31);
    return 0;
  case QMOE_GGML_Q6_K:
    for (int64_t k = 0; k < nb; k++) quantize_q6_k_block(src + k * be, out + k * bb);
    return 0;
  default: {
    flat_plan p;
    int rc = flat_build(&p, qt);
    if (rc) return rc;
    for (int64_t k = 0; k < nb; k++) flat_block(&p, src + k * be, out + k * bb);
    flat_free(&p);
    return 0;
  }
  }
}
