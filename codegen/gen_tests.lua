-- gen_tests.lua: writes generated/tests/parity_body.h (the one parity test, from the C template below) and a
-- thin generated/tests/test_parity_<backend>.c per backend (cpu, vulkan, cuda) that names it and includes it:
-- every stage × qtype × accumulator of contracts/stages/*.yaml (qtypes resolved against contracts/quant),
-- run on the backend and on the CPU reference, judged with the thresholds of the model contract's
-- falsifiers (contracts/models/*.yaml, emitted as constants naming the falsifier id and file:line).
-- Usage: qmoe-lua codegen/gen_tests.lua [--contracts DIR] --out-dir DIR
local util = require("util")
local stages_gen = dofile("codegen/gen_stages.lua")
local M = {}
local USAGE = "usage: qmoe-lua codegen/gen_tests.lua [--contracts DIR] --out-dir DIR"
local SCRIPT = "codegen/gen_tests.lua"
local TEMPLATE, BACKEND_TEMPLATE -- the C templates, at the end of this file

-- What differs between the backends' files; everything else is the one template below.
local BACKENDS = {
  { name = "cpu", nodev = "no CPU backend", label = "", is_reference = 1 },
  { name = "vulkan", nodev = "no Vulkan device", label = "", is_reference = 0 },
  { name = "cuda", nodev = "no CUDA device", label = " * qmoe-test: needs CUDA (skips here; run on the device tool with QMOE_TEST_REQUIRE_BACKEND=1)\n",
    is_reference = 0 },
}

-- The falsifiers the template enforces, by id; `metric` is what the check must measure.
local FALSIFIERS = {
  { id = "FALSIFY-STAGE-PARITY-F32", metric = "nmse", acc = "f32", const = "NMSE_MAX_F32" },
  { id = "FALSIFY-STAGE-PARITY-F64", metric = "nmse", acc = "f64", const = "NMSE_MAX_F64" },
  { id = "FALSIFY-STAGE-MAXREL-F32", metric = "max_abs_rel", acc = "f32", const = "MAXREL_MAX_F32" },
  { id = "FALSIFY-STAGE-MAXREL-F64", metric = "max_abs_rel", acc = "f64", const = "MAXREL_MAX_F64" },
  { id = "FALSIFY-ROUTER-WEIGHTS-SUM", metric = "abs_err", const = "ROUTER_WSUM_MAX" },
  { id = "FALSIFY-FINITE" },
  { id = "FALSIFY-DETERMINISM" },
  { id = "FALSIFY-QTYPE-DISPATCH" },
}

-- The model contract holding the falsifiers (the first model contract that defines them).
local function model_contract(ctx)
  for _, m in ipairs(ctx.models.list) do
    for _, f in ipairs(m.falsification_tests or {}) do
      if f.id == "FALSIFY-STAGE-PARITY-F32" then return m end
    end
  end
  return nil
end

function M.plan(ctx)
  local model = model_contract(ctx)
  if not model or #ctx.stages.list == 0 then return {} end -- nothing to test until both contracts exist
  local inputs = { model.__file }
  for _, s in ipairs(ctx.stages.list) do inputs[#inputs + 1] = s.__file end
  for _, q in ipairs(ctx.quant.list) do inputs[#inputs + 1] = q.__file end
  local outputs = { "generated/tests/parity_body.h" }
  for _, b in ipairs(BACKENDS) do outputs[#outputs + 1] = "generated/tests/test_parity_" .. b.name .. ".c" end
  return { { outputs = outputs, inputs = inputs, desc = "generated/tests/test_parity_*", args = "--out-dir generated/tests" } }
end

-- The template checks measure <= threshold; a contract asking for another comparison fails generation.
local COMPARATORS = { ["<="] = "<=", le = "<=" }

-- Reads each falsifier's check; raises listing every missing or malformed one.
local function thresholds(model)
  local byid, errs, out = {}, {}, {}
  for _, f in ipairs(model.falsification_tests or {}) do byid[f.id] = f end
  for _, want in ipairs(FALSIFIERS) do
    local f = byid[want.id]
    if not f then
      errs[#errs + 1] = model.__file .. ": falsification_tests has no " .. want.id .. " (the parity tests enforce it)"
    elseif want.metric then
      local c = f.check or {}
      local line = c.threshold ~= nil and yaml.pos(c, "threshold") or yaml.pos(f, "id")
      local at = model.__file .. ":" .. tostring(line)
      if c.metric ~= want.metric then
        errs[#errs + 1] = at .. ": " .. want.id .. " check.metric is '" .. tostring(c.metric) .. "', expected '" .. want.metric .. "'"
      elseif type(c.threshold) ~= "number" then
        errs[#errs + 1] = at .. ": " .. want.id .. " check.threshold must be a number"
      elseif not COMPARATORS[c.comparator] then
        errs[#errs + 1] = at .. ": " .. want.id .. " check.comparator '" .. tostring(c.comparator) .. "' is not <= (the only comparison the template implements)"
      elseif want.acc and c.acc and c.acc ~= want.acc then
        errs[#errs + 1] = at .. ": " .. want.id .. " check.acc is '" .. tostring(c.acc) .. "', expected '" .. want.acc .. "'"
      else
        local stages
        if type(c.stages) == "table" and #c.stages > 0 then
          stages = {}
          for _, s in ipairs(c.stages) do stages[s] = true end
        end
        out[want.id] = { id = want.id, const = want.const, value = c.threshold, cmp = COMPARATORS[c.comparator],
                         metric = c.metric, at = at, runs_on = c.runs_on, stages = stages }
      end
    else
      out[want.id] = { id = want.id, at = model.__file .. ":" .. tostring(yaml.pos(f, "id")), runs_on = (f.check or {}).runs_on }
    end
  end
  if #errs > 0 then error(table.concat(errs, "\n"), 0) end
  return out
end

-- The stages the template knows how to feed; a contract naming another stage fails the generator loudly.
local KNOWN = { matvec = true, moe_gate_up_swiglu = true, moe_down = true, router_topk = true, rmsnorm = true,
                qk_norm = true, rope_neox = true, kv_store = true, attention = true, add = true, argmax = true }

-- Every case: stage × qtype (stage ∩ quant contract accumulators) × acc.
local function cases(recs, th)
  local list, errs = {}, {}
  for _, r in ipairs(recs) do
    if not KNOWN[r.name] then
      errs[#errs + 1] = r.file .. ": stage '" .. r.name .. "' has no input recipe in codegen/gen_tests.lua's template; add one"
    end
    local qts = r.by_qtype and r.qtypes or { false }
    for _, q in ipairs(qts) do
      local accs = r.by_acc and r.accs or { "f32" }
      for _, acc in ipairs(accs) do
        local qacc = true
        if q and q.accumulators then
          qacc = false
          for _, a in ipairs(q.accumulators) do qacc = qacc or a == acc end
        end
        if qacc then
          local nm = th[acc == "f64" and "FALSIFY-STAGE-PARITY-F64" or "FALSIFY-STAGE-PARITY-F32"]
          local mr = th[acc == "f64" and "FALSIFY-STAGE-MAXREL-F64" or "FALSIFY-STAGE-MAXREL-F32"]
          for _, t in ipairs({ nm, mr }) do
            if t.stages and not t.stages[r.name] then
              errs[#errs + 1] = t.at .. ": " .. t.id .. " lists check.stages without '" .. r.name .. "', so " ..
                                r.name .. "/" .. acc .. " would go unchecked; add the stage"
            end
          end
          list[#list + 1] = { stage = r.name, qtype = q and q.ggml_type or -1, qname = q and q.name or "-",
                              acc = acc, acc_name = r.by_acc and acc or "-", nmse = nm.const, maxrel = mr.const }
        end
      end
    end
  end
  if #errs > 0 then error(table.concat(errs, "\n"), 0) end
  return list
end

-- Shortest decimal that reads back as V.
local function fmt_num(v)
  for digits = 1, 17 do
    local s = string.format("%." .. digits .. "g", v)
    if tonumber(s) == v then return s end
  end
  return string.format("%.17g", v)
end

local function fill(template, subst)
  return (template:gsub("@(%u+)@", function(k)
    if subst[k] == nil then error("template placeholder @" .. k .. "@ has no value", 0) end
    return subst[k]
  end))
end

-- The thin per-backend file: what differs between backends, then the shared body.
local function emit_backend(backend, sources)
  return fill(BACKEND_TEMPLATE, { BANNER = util.banner("c", SCRIPT, sources), BACKEND = backend.name,
                                  NODEV = backend.nodev, LABEL = backend.label, ISREF = tostring(backend.is_reference) })
end

local function emit_body(recs, th, model, sources)
  local consts = {}
  for _, want in ipairs(FALSIFIERS) do
    local t = th[want.id]
    if t.const then
      consts[#consts + 1] = string.format("/* %s: %s %s %s (%s; runs on %s) */\n#define %s %s",
        t.id, t.metric, t.cmp, fmt_num(t.value), t.at, tostring(t.runs_on), t.const, fmt_num(t.value))
    else
      consts[#consts + 1] = string.format("/* %s: %s (runs on %s) */", t.id, t.at, tostring(t.runs_on))
    end
  end
  local rows = {}
  for _, c in ipairs(cases(recs, th)) do
    rows[#rows + 1] = string.format('  { "%s", %d, "%s", QMOE_ACC_%s, "%s", %s, %s },', c.stage, c.qtype, c.qname,
                                    c.acc:upper(), c.acc_name, c.nmse, c.maxrel)
  end
  return fill(TEMPLATE, { BANNER = util.banner("c", SCRIPT, sources), THRESHOLDS = table.concat(consts, "\n"),
                          CASES = table.concat(rows, "\n") })
end

local function main(argv)
  local o = util.parse_args(argv, { contracts = "contracts", out_dir = "" }, USAGE)
  if o.out_dir == "" then error(USAGE, 0) end
  local ctx = require("contracts").load_all(o.contracts)
  local model = model_contract(ctx)
  if not model then error(o.contracts .. "/models: no model contract defines FALSIFY-STAGE-PARITY-F32", 0) end
  local recs = stages_gen.stages(ctx)
  local th = thresholds(model)
  local sources = { model.__file, o.contracts .. "/stages/*.yaml", o.contracts .. "/quant/*.yaml" }
  util.write_if_changed(o.out_dir .. "/parity_body.h", emit_body(recs, th, model, sources))
  for _, b in ipairs(BACKENDS) do
    util.write_if_changed(o.out_dir .. "/test_parity_" .. b.name .. ".c", emit_backend(b, sources))
  end
end

BACKEND_TEMPLATE = [==[
@BANNER@/* test_parity_@BACKEND@.c: backend "@BACKEND@" against the CPU reference for every stage × qtype × accumulator
 * of contracts/stages; the test itself is parity_body.h, shared by every backend.
@LABEL@ */
#define BACKEND_NAME "@BACKEND@"
#define NO_DEVICE "@NODEV@"
/* 1 when the backend runs the CPU reference itself: FALSIFY-QTYPE-DISPATCH then demands bitwise equality
 * with the reference's path for the same accumulator (metric `equal`), not just the parity thresholds. */
#define BACKEND_IS_REFERENCE @ISREF@
#include "parity_body.h"
]==]

TEMPLATE = [==[
@BANNER@/* parity_body.h: the parity test of one backend (named by the including test_parity_<backend>.c) against
 * the CPU reference for every stage × qtype × accumulator of contracts/stages (f32 variants against the
 * reference's f32 path, f64 variants against its long-double oracle), plus the mixed-qtype MoE layer, a call
 * with a qtype that has no variant, and bitwise determinism.
 * Inputs are fresh random data each run (seed printed); outputs are poisoned with NaN before each run.
 * A backend that cannot be opened skips every case (set QMOE_TEST_REQUIRE_BACKEND=1 to make that a
 * failure); one that opens and then fails a stage fails. */
#if !defined(BACKEND_NAME) || !defined(NO_DEVICE) || !defined(BACKEND_IS_REFERENCE)
#error "parity_body.h is included by a test_parity_<backend>.c that defines the backend"
#endif
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "../../tests/harness.h"
#include "backend.h"
#include "qmoe.h"
#include "ref_internal.h"
#include "stage_table.h"

/* ---- thresholds, from the model contract's falsifiers ---- */
@THRESHOLDS@

typedef struct {
  const char *stage;  /* contract name */
  int qtype;          /* GGUF type id, -1 for stages that do not vary by qtype */
  const char *qname;  /* "-" likewise */
  qmoe_acc acc;
  const char *acc_name; /* "-" for stages that do not vary by accumulator (run with QMOE_ACC_F32) */
  double nmse_max, maxrel_max;
} parity_case;

static const parity_case cases[] = {
@CASES@
};

/* ---- fixture ---- */

static qmoe_backend *be;
static char open_error[1024];
static char case_name[256]; /* the harness prints this after the case runs, so a case appends its measures */

/* A stage call with host copies of every buffer: inputs filled, outputs poisoned. */
typedef struct {
  const qmoe_stage_info *si;
  qmoe_stage_call call;
  int nbuf;
  size_t size[QMOE_STAGE_MAX_BUFS];
  unsigned char *host[QMOE_STAGE_MAX_BUFS];
} prepared;

static void prepared_free(prepared *pr) {
  for (int i = 0; i < QMOE_STAGE_MAX_BUFS; i++) free(pr->host[i]);
  memset(pr, 0, sizeof *pr);
}

static int64_t rand_int(int64_t lo, int64_t hi) { return lo + (int64_t)(t_rand_u64() % (uint64_t)(hi - lo + 1)); }

static float *f32_of(prepared *pr, int i) { return (float *)pr->host[i]; }

static int buf_index(const qmoe_stage_info *si, const char *name) {
  for (int i = 0; i < si->n_inputs + si->n_outputs; i++)
    if (strcmp(si->buf_names[i], name) == 0) return i;
  return -1;
}

/* Sets int param NAME (looked up in the contract's param list); 0, or -1 when the contract lacks it. */
static int set_p(prepared *pr, const char *name, int64_t v) {
  for (int i = 0; i < pr->si->n_params; i++)
    if (strcmp(pr->si->params[i], name) == 0) { pr->call.p[i] = v; return 0; }
  return -1;
}
static int set_f(prepared *pr, const char *name, double v) {
  for (int i = 0; i < pr->si->n_fparams; i++)
    if (strcmp(pr->si->fparams[i], name) == 0) { pr->call.f[i] = v; return 0; }
  return -1;
}
static int64_t get_p(const prepared *pr, const char *name) {
  for (int i = 0; i < pr->si->n_params; i++)
    if (strcmp(pr->si->params[i], name) == 0) return pr->call.p[i];
  return -1;
}

/* Fills an f32 buffer with N(0, sd²); poisons (NaN) an output. */
static void fill_normal(float *x, size_t n, double sd) {
  for (size_t i = 0; i < n; i++) x[i] = (float)(sd * t_rand_normal());
}
static void poison(float *x, size_t n) {
  for (size_t i = 0; i < n; i++) x[i] = NAN;
}

/* K distinct expert ids in [0, E), in random order. */
static void distinct_ids(int32_t *ids, int64_t K, int64_t E) {
  for (int64_t k = 0; k < K; k++) {
    int again;
    do {
      ids[k] = (int32_t)rand_int(0, E - 1);
      again = 0;
      for (int64_t j = 0; j < k; j++) again |= ids[j] == ids[k];
    } while (again);
  }
}

/* Quantized weights: Gaussian values (sd 1/sqrt(512), like trained weights) through the qtype's reference
 * quantizer, so block scales are realistic. Quantizing is the slow part of a run, so each qtype gets one pool
 * per run of POOL_UNITS units of 256 elements (whole blocks in every format: blocks are independent, so any
 * run of units is a valid matrix of any row length that is a multiple of 256). A weight buffer is the pool
 * read cyclically from a random unit. POOL_UNITS is prime, so two places of one buffer hold the same bytes
 * only when their distance is a multiple of POOL_UNITS units: reading the wrong expert or row (an address
 * off by anything else) reads other numbers. The second weight buffer of a call (Wu) starts elsewhere. */
enum { POOL_UNITS = 1021, POOL_QTYPES = 64 };
static unsigned char *pool[POOL_QTYPES];

static int make_pool(const qmoe_qtype_info *q, char *why, size_t whylen) {
  if (q->ggml_type < 0 || q->ggml_type >= POOL_QTYPES || 256 % q->block_elements) {
    snprintf(why, whylen, "%s (ggml type %d): the test's weight pool takes ids < %d and blocks dividing 256", q->name,
             q->ggml_type, POOL_QTYPES);
    return -1;
  }
  if (pool[q->ggml_type]) return 0;
  size_t unit = (size_t)qmoe_qtype_row_bytes(q, 256);
  unsigned char *bytes = malloc(POOL_UNITS * unit);
  float src[256];
  for (size_t u = 0; u < POOL_UNITS; u++) {
    fill_normal(src, 256, 1.0 / sqrt(512.0));
    int rc = qmoe_quantize_row(q->ggml_type, src, bytes + u * unit, 256);
    if (rc) {
      snprintf(why, whylen, "qmoe_quantize_row(%s) failed (%d): %s", q->name, rc, qmoe_last_error());
      free(bytes);
      return -1;
    }
  }
  pool[q->ggml_type] = bytes;
  return 0;
}

static size_t pool_first; /* unit where the current call's first weight buffer starts */

static int fill_quantized(prepared *pr, int buf, char *why, size_t whylen) {
  const qmoe_qtype_info *q = qmoe_qtype_by_id(pr->call.qtype);
  if (!q) { snprintf(why, whylen, "no codec for ggml type %d: %s", pr->call.qtype, qmoe_last_error()); return -1; }
  if (make_pool(q, why, whylen)) return -1;
  size_t unit = (size_t)qmoe_qtype_row_bytes(q, 256), need = pr->size[buf];
  if (need % unit) {
    snprintf(why, whylen, "%s: %zu bytes are not whole units of 256 %s elements", pr->si->bufs[buf].name, need, q->name);
    return -1;
  }
  int first = 1;
  for (int i = 0; i < buf; i++) first &= pr->si->bufs[i].dtype != QMOE_DTYPE_QTYPE;
  size_t start = (size_t)rand_int(0, POOL_UNITS - 1);
  if (first) pool_first = start;
  else if (start == pool_first) start = (start + 1) % POOL_UNITS;
  for (size_t u = 0; u < need / unit; u++)
    memcpy(pr->host[buf] + u * unit, pool[q->ggml_type] + ((start + u) % POOL_UNITS) * unit, unit);
  return 0;
}

/* Realistic shapes small enough for lavapipe: the Qwen3-MoE layout scaled down. */
static int choose_params(prepared *pr, const char *stage, char *why, size_t whylen) {
  int bad = 0;
  int64_t D = t_rand_u64() & 1 ? 128 : 64;
  if (!strcmp(stage, "matvec")) {
    bad |= set_p(pr, "rows", rand_int(64, 256)) | set_p(pr, "cols", 256 * rand_int(2, 4));
  } else if (!strcmp(stage, "moe_gate_up_swiglu") || !strcmp(stage, "moe_down")) {
    bad |= set_p(pr, "H", 512) | set_p(pr, "F", 256) | set_p(pr, "E", 8) | set_p(pr, "K", 4);
  } else if (!strcmp(stage, "router_topk")) {
    bad |= set_p(pr, "H", 512) | set_p(pr, "E", t_rand_u64() & 1 ? 128 : 8) | set_p(pr, "K", t_rand_u64() & 1 ? 8 : 4);
  } else if (!strcmp(stage, "rmsnorm")) {
    bad |= set_p(pr, "n", rand_int(256, 2048)) | set_f(pr, "eps", 1e-6);
  } else if (!strcmp(stage, "qk_norm")) {
    bad |= set_p(pr, "nh", t_rand_u64() & 1 ? 8 : 2) | set_p(pr, "D", D) | set_f(pr, "eps", 1e-6);
  } else if (!strcmp(stage, "rope_neox")) {
    bad |= set_p(pr, "nh", t_rand_u64() & 1 ? 8 : 2) | set_p(pr, "D", D) | set_p(pr, "pos", rand_int(0, 4095)) |
           set_f(pr, "theta", t_rand_u64() & 1 ? 1e6 : 1e7);
  } else if (!strcmp(stage, "kv_store")) {
    int64_t ctx = rand_int(1, 40);
    bad |= set_p(pr, "nkv", 2) | set_p(pr, "D", D) | set_p(pr, "ctx", ctx) | set_p(pr, "pos", rand_int(0, ctx - 1));
  } else if (!strcmp(stage, "attention")) {
    int64_t n_kv = rand_int(1, 33);
    bad |= set_p(pr, "nh", 8) | set_p(pr, "nkv", 2) | set_p(pr, "D", D) | set_p(pr, "n_kv", n_kv) |
           set_p(pr, "ctx", n_kv + rand_int(0, 8));
  } else if (!strcmp(stage, "add")) {
    bad |= set_p(pr, "n", rand_int(256, 4096));
  } else if (!strcmp(stage, "argmax")) {
    bad |= set_p(pr, "n", rand_int(1, 8192));
  } else {
    snprintf(why, whylen, "the template has no input recipe for stage %s", stage);
    return -1;
  }
  if (bad) snprintf(why, whylen, "contracts/stages/%s.yaml lacks a param the template sets (params changed?)", stage);
  return bad ? -1 : 0;
}

/* Builds a call of STAGE with QTYPE and ACC and host buffers for it. */
static int prepare(prepared *pr, const char *stage, int qtype, qmoe_acc acc, char *why, size_t whylen) {
  memset(pr, 0, sizeof *pr);
  pr->si = qmoe_stage_by_name(stage);
  if (!pr->si) { snprintf(why, whylen, "stage table has no stage '%s'", stage); return -1; }
  pr->call.stage = pr->si->id;
  pr->call.qtype = qtype;
  pr->call.acc = acc;
  pr->nbuf = pr->si->n_inputs + pr->si->n_outputs;
  if (choose_params(pr, stage, why, whylen)) return -1;
  if (qmoe_stage_check(&pr->call, pr->size)) {
    snprintf(why, whylen, "the reference rejects the call: %s", qmoe_last_error());
    return -1;
  }
  for (int i = 0; i < pr->nbuf; i++) pr->host[i] = calloc(1, pr->size[i] ? pr->size[i] : 1);
  for (int i = 0; i < pr->nbuf; i++) {
    const qmoe_stage_buf *b = &pr->si->bufs[i];
    size_t n4 = pr->size[i] / 4;
    if (b->dtype == QMOE_DTYPE_QTYPE) {
      if (fill_quantized(pr, i, why, whylen)) return -1;
    } else if (b->is_output) {
      if (b->dtype == QMOE_DTYPE_F32) poison(f32_of(pr, i), n4);
      else for (size_t j = 0; j < n4; j++) ((int32_t *)pr->host[i])[j] = INT32_MIN;
    } else if (b->dtype == QMOE_DTYPE_F32) {
      fill_normal(f32_of(pr, i), n4, 1.0);
    } else if (!strcmp(b->name, "ids")) {
      distinct_ids((int32_t *)pr->host[i], get_p(pr, "K"), get_p(pr, "E"));
    } else {
      snprintf(why, whylen, "the template cannot fill i32 input %s of %s", b->name, stage);
      return -1;
    }
  }
  /* Stage-specific inputs: router weights as the router makes them, a KV cache around the stored row,
   * a tie for argmax. */
  if (!strcmp(stage, "moe_down")) {
    int w = buf_index(pr->si, "w");
    int64_t K = get_p(pr, "K");
    double s = 0;
    for (int64_t k = 0; k < K; k++) s += f32_of(pr, w)[k] = (float)(0.05 + t_rand_unit());
    for (int64_t k = 0; k < K; k++) f32_of(pr, w)[k] = (float)(f32_of(pr, w)[k] / s);
  } else if (!strcmp(stage, "router_topk")) {
    int wr = buf_index(pr->si, "Wr");
    fill_normal(f32_of(pr, wr), pr->size[wr] / 4, 1.0 / sqrt((double)get_p(pr, "H")));
  } else if (!strcmp(stage, "kv_store")) {
    /* Rows other than pos hold earlier tokens and must survive; row pos is poisoned. */
    size_t row = (size_t)(get_p(pr, "nkv") * get_p(pr, "D")), at = (size_t)get_p(pr, "pos") * row;
    for (int c = 0; c < 2; c++) {
      int i = buf_index(pr->si, c ? "Vc" : "Kc");
      fill_normal(f32_of(pr, i), pr->size[i] / 4, 1.0);
      poison(f32_of(pr, i) + at, row);
    }
  } else if (!strcmp(stage, "argmax")) {
    int64_t n = get_p(pr, "n");
    float *x = f32_of(pr, 0);
    if (n > 1 && (t_rand_u64() & 1)) { /* a tie: the lower index must win */
      int64_t best = 0;
      for (int64_t i = 1; i < n; i++) if (x[i] > x[best]) best = i;
      int64_t other = rand_int(0, n - 1);
      if (other != best) x[other] = x[best];
    }
  }
  return 0;
}

/* Runs the call on the backend from the host copies; OUT[i] receives each output (caller frees). */
static int run_backend(prepared *pr, unsigned char *out[QMOE_STAGE_MAX_BUFS], char *why, size_t whylen) {
  qmoe_buffer *b[QMOE_STAGE_MAX_BUFS] = {0};
  qmoe_stage_call c = pr->call;
  int rc = 0;
  for (int i = 0; i < pr->nbuf && !rc; i++) {
    if ((rc = be->alloc(be, pr->size[i], &b[i]))) snprintf(why, whylen, "alloc %zu bytes: %s", pr->size[i], qmoe_last_error());
    else if ((rc = be->upload(be, b[i], 0, pr->host[i], pr->size[i]))) snprintf(why, whylen, "upload: %s", qmoe_last_error());
    c.buf[i] = b[i];
    c.off[i] = 0;
  }
  if (!rc && (rc = be->run(be, &c))) snprintf(why, whylen, "run failed (%d): %s", rc, qmoe_last_error());
  if (!rc && (rc = be->sync(be))) snprintf(why, whylen, "sync failed (%d): %s", rc, qmoe_last_error());
  for (int i = 0; i < pr->nbuf; i++) {
    out[i] = NULL;
    if (!rc && pr->si->bufs[i].is_output) {
      out[i] = malloc(pr->size[i] ? pr->size[i] : 1);
      if ((rc = be->download(be, b[i], 0, out[i], pr->size[i]))) snprintf(why, whylen, "download: %s", qmoe_last_error());
    }
  }
  for (int i = 0; i < pr->nbuf; i++) if (b[i]) be->free_buf(be, b[i]);
  return rc;
}

/* Runs the CPU reference on copies of the host buffers: f32 variants against the reference's f32 path,
 * f64 variants against the long-double oracle. */
static int run_reference_prec(prepared *pr, qmoe_ref_prec prec, unsigned char *out[QMOE_STAGE_MAX_BUFS], char *why,
                              size_t whylen) {
  void *ptr[QMOE_STAGE_MAX_BUFS] = {0};
  for (int i = 0; i < pr->nbuf; i++) {
    out[i] = malloc(pr->size[i] ? pr->size[i] : 1);
    memcpy(out[i], pr->host[i], pr->size[i]);
    ptr[i] = out[i];
  }
  int rc = qmoe_ref_run(&pr->call, prec, ptr, pr->size);
  if (rc) snprintf(why, whylen, "CPU reference failed (%d): %s", rc, qmoe_last_error());
  return rc;
}
static int run_reference(prepared *pr, unsigned char *out[QMOE_STAGE_MAX_BUFS], char *why, size_t whylen) {
  return run_reference_prec(pr, pr->call.acc == QMOE_ACC_F64 ? QMOE_REF_LDBL : QMOE_REF_F32, out, why, whylen);
}

static void free_outs(unsigned char *out[QMOE_STAGE_MAX_BUFS]) {
  for (int i = 0; i < QMOE_STAGE_MAX_BUFS; i++) { free(out[i]); out[i] = NULL; }
}

typedef struct { double nmse, maxrel; } measures;

/* Compares one f32 output: FALSIFY-FINITE, then NMSE = Σ(a−b)²/Σb² and max|a−b|/max|b| (b = reference). */
static void compare_f32(const char *name, const float *a, const float *b, size_t n, const parity_case *pc,
                        measures *m) {
  double se = 0, sb = 0, maxd = 0, maxb = 0;
  for (size_t i = 0; i < n; i++) {
    if (!isfinite(a[i])) {
      m->nmse = m->maxrel = NAN; /* not measured */
      CHECK(0, "FALSIFY-FINITE: %s[%zu] = %g on " BACKEND_NAME " (reference %.9g)", name, i, (double)a[i], (double)b[i]);
      return;
    }
    if (!isfinite(b[i])) {
      m->nmse = m->maxrel = NAN;
      CHECK(0, "the reference's %s[%zu] is %g (a test bug or a reference bug)", name, i, (double)b[i]);
      return;
    }
    double d = (double)a[i] - (double)b[i];
    se += d * d;
    sb += (double)b[i] * (double)b[i];
    if (fabs(d) > maxd) maxd = fabs(d);
    if (fabs((double)b[i]) > maxb) maxb = fabs((double)b[i]);
  }
  double nmse = sb > 0 ? se / sb : (se > 0 ? INFINITY : 0);
  double maxrel = maxb > 0 ? maxd / maxb : (maxd > 0 ? INFINITY : 0);
  if (!isnan(m->nmse) && nmse > m->nmse) m->nmse = nmse; /* a NaN (an unmeasured output) stays */
  if (!isnan(m->maxrel) && maxrel > m->maxrel) m->maxrel = maxrel;
  const char *nmse_id = pc->acc == QMOE_ACC_F64 ? "FALSIFY-STAGE-PARITY-F64" : "FALSIFY-STAGE-PARITY-F32";
  const char *rel_id = pc->acc == QMOE_ACC_F64 ? "FALSIFY-STAGE-MAXREL-F64" : "FALSIFY-STAGE-MAXREL-F32";
  CHECK(nmse <= pc->nmse_max, "%s: %s nmse %.3g > %.3g", nmse_id, name, nmse, pc->nmse_max);
  CHECK(maxrel <= pc->maxrel_max, "%s: %s max_abs_rel %.3g > %.3g", rel_id, name, maxrel, pc->maxrel_max);
}

/* Judges every output of a case; ids (i32) and copies (kv_store) must match exactly. */
static void compare_outputs(prepared *pr, unsigned char *got[], unsigned char *want[], const parity_case *pc,
                            measures *m) {
  int exact = !strcmp(pr->si->name, "kv_store");
  for (int i = 0; i < pr->nbuf; i++) {
    const qmoe_stage_buf *b = &pr->si->bufs[i];
    if (!b->is_output) continue;
    size_t n = pr->size[i] / 4;
    if (b->dtype == QMOE_DTYPE_I32) {
      for (size_t j = 0; j < n; j++) {
        int32_t g = ((int32_t *)got[i])[j], w = ((int32_t *)want[i])[j];
        if (g != w) { CHECK(0, "%s[%zu] = %d, reference %d (ids must match exactly)", b->name, j, (int)g, (int)w); break; }
      }
    } else if (exact) {
      const float *g = (const float *)got[i], *w = (const float *)want[i];
      for (size_t j = 0; j < n; j++) {
        if (memcmp(&g[j], &w[j], 4)) {
          CHECK(0, "%s[%zu] = %g, reference %g (a copy must be exact)", b->name, j, (double)g[j], (double)w[j]);
          break;
        }
      }
      compare_f32(b->name, g, w, n, pc, m);
    } else {
      compare_f32(b->name, (const float *)got[i], (const float *)want[i], n, pc, m);
    }
  }
  if (!strcmp(pr->si->name, "router_topk")) { /* FALSIFY-ROUTER-WEIGHTS-SUM */
    int w = buf_index(pr->si, "w");
    int64_t K = get_p(pr, "K");
    double s = 0;
    for (int64_t k = 0; k < K; k++) s += ((const float *)got[w])[k];
    CHECK(fabs(s - 1.0) <= ROUTER_WSUM_MAX, "FALSIFY-ROUTER-WEIGHTS-SUM: weights sum to %.9g (|err| %.3g > %.3g)", s,
          fabs(s - 1.0), ROUTER_WSUM_MAX);
  }
}

/* FALSIFY-DETERMINISM: a second run from freshly poisoned buffers gives the same bits. */
static void compare_runs(prepared *pr, unsigned char *first[], unsigned char *second[]) {
  for (int i = 0; i < pr->nbuf; i++) {
    if (!pr->si->bufs[i].is_output || !memcmp(first[i], second[i], pr->size[i])) continue;
    size_t j = 0;
    while (j + 4 <= pr->size[i] && !memcmp(first[i] + j, second[i] + j, 4)) j += 4;
    CHECK(0, "FALSIFY-DETERMINISM: two runs differ in %s at element %zu", pr->si->bufs[i].name, j / 4);
    return;
  }
}

static int backend_or_skip(void) {
  if (be) return 1;
  if (getenv("QMOE_TEST_REQUIRE_BACKEND") && *getenv("QMOE_TEST_REQUIRE_BACKEND")) {
    CHECK(0, NO_DEVICE ": %s (QMOE_TEST_REQUIRE_BACKEND is set)", open_error);
    return 0;
  }
  t_skip(NO_DEVICE ": %s", open_error);
  return 0;
}

static const parity_case *current;

static void test_case(void) {
  if (!backend_or_skip()) return;
  char why[1024] = "";
  prepared pr;
  unsigned char *got[QMOE_STAGE_MAX_BUFS] = {0}, *again[QMOE_STAGE_MAX_BUFS] = {0}, *want[QMOE_STAGE_MAX_BUFS] = {0};
  if (prepare(&pr, current->stage, current->qtype, current->acc, why, sizeof why)) {
    CHECK(0, "%s", why);
  } else if (run_reference(&pr, want, why, sizeof why)) {
    CHECK(0, "%s", why);
  } else if (run_backend(&pr, got, why, sizeof why) || run_backend(&pr, again, why, sizeof why)) {
    CHECK(0, BACKEND_NAME " %s", why);
  } else {
    measures m = {0, 0};
    compare_outputs(&pr, got, want, current, &m);
    compare_runs(&pr, got, again);
    size_t len = strlen(case_name);
    snprintf(case_name + len, sizeof case_name - len, " nmse=%.1e maxrel=%.1e", m.nmse, m.maxrel);
  }
  free_outs(got);
  free_outs(again);
  free_outs(want);
  prepared_free(&pr);
}

/* FALSIFY-QTYPE-DISPATCH (1): one layer's MoE as the Q4_K_M recipe mixes it — Q4_K gate/up experts, Q6_K down
 * experts — run as moe_gate_up_swiglu(q4_k) then moe_down(q6_k) with h kept on the device. */
static qmoe_acc mixed_acc;
static void test_mixed_qtype(void) {
  if (!backend_or_skip()) return;
  char why[1024] = "";
  prepared up = {0}, down = {0};
  const qmoe_qtype_info *q4 = qmoe_qtype_by_name("q4_k"), *q6 = qmoe_qtype_by_name("q6_k");
  REQUIRE(q4 && q6, "no q4_k or q6_k codec: %s", qmoe_last_error());
  if (prepare(&up, "moe_gate_up_swiglu", q4->ggml_type, mixed_acc, why, sizeof why) ||
      prepare(&down, "moe_down", q6->ggml_type, mixed_acc, why, sizeof why)) {
    CHECK(0, "%s", why);
    prepared_free(&up);
    prepared_free(&down);
    return;
  }
  /* The same token: down reads gate_up's ids and h; prepare() drew both with the same H, F, E, K. */
  int up_ids = buf_index(up.si, "ids"), up_h = buf_index(up.si, "h");
  int dn_ids = buf_index(down.si, "ids"), dn_h = buf_index(down.si, "h"), dn_y = buf_index(down.si, "y");
  memcpy(down.host[dn_ids], up.host[up_ids], up.size[up_ids]);
  /* Reference chain. */
  unsigned char *ref_up[QMOE_STAGE_MAX_BUFS] = {0}, *ref_down[QMOE_STAGE_MAX_BUFS] = {0};
  int rc = run_reference(&up, ref_up, why, sizeof why);
  if (!rc) {
    memcpy(down.host[dn_h], ref_up[up_h], up.size[up_h]);
    rc = run_reference(&down, ref_down, why, sizeof why);
  }
  /* Backend chain, h never leaving the device. */
  qmoe_buffer *bu[QMOE_STAGE_MAX_BUFS] = {0}, *bd[QMOE_STAGE_MAX_BUFS] = {0};
  qmoe_stage_call cu = up.call, cd = down.call;
  cu.tensor = "blk.0.ffn_gate_exps.weight";
  cd.tensor = "blk.0.ffn_down_exps.weight";
  float *y = malloc(down.size[dn_y]);
  for (int i = 0; i < up.nbuf && !rc; i++) {
    if ((rc = be->alloc(be, up.size[i], &bu[i])) || (rc = be->upload(be, bu[i], 0, up.host[i], up.size[i])))
      snprintf(why, sizeof why, BACKEND_NAME " alloc/upload: %s", qmoe_last_error());
    cu.buf[i] = bu[i];
  }
  for (int i = 0; i < down.nbuf && !rc; i++) {
    if (i == dn_h) { bd[i] = NULL; cd.buf[i] = bu[up_h]; continue; }
    if ((rc = be->alloc(be, down.size[i], &bd[i])) || (rc = be->upload(be, bd[i], 0, down.host[i], down.size[i])))
      snprintf(why, sizeof why, BACKEND_NAME " alloc/upload: %s", qmoe_last_error());
    cd.buf[i] = bd[i];
  }
  if (!rc && (rc = be->run(be, &cu))) snprintf(why, sizeof why, BACKEND_NAME " moe_gate_up_swiglu(q4_k): %s", qmoe_last_error());
  if (!rc && (rc = be->run(be, &cd))) snprintf(why, sizeof why, BACKEND_NAME " moe_down(q6_k): %s", qmoe_last_error());
  if (!rc && (rc = be->sync(be))) snprintf(why, sizeof why, BACKEND_NAME " sync: %s", qmoe_last_error());
  if (!rc && (rc = be->download(be, bd[dn_y], 0, y, down.size[dn_y])))
    snprintf(why, sizeof why, BACKEND_NAME " download: %s", qmoe_last_error());
  if (rc) {
    CHECK(0, "FALSIFY-QTYPE-DISPATCH: %s", why);
  } else {
    /* Judged with moe_down's thresholds for this accumulator. */
    parity_case pc = {0};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
      if (!strcmp(cases[i].stage, "moe_down") && cases[i].qtype == q6->ggml_type && cases[i].acc == mixed_acc) pc = cases[i];
    if (!pc.stage) {
      CHECK(0, "contracts list no moe_down/q6_k variant for this accumulator (FALSIFY-QTYPE-DISPATCH needs one)");
    } else {
      measures m = {0, 0};
      compare_f32("y", y, (const float *)ref_down[dn_y], down.size[dn_y] / 4, &pc, &m);
      if (BACKEND_IS_REFERENCE) { /* the same precision path of the reference, bit for bit */
        unsigned char *same_up[QMOE_STAGE_MAX_BUFS] = {0}, *same_down[QMOE_STAGE_MAX_BUFS] = {0};
        qmoe_ref_prec prec = qmoe_ref_prec_of(mixed_acc);
        if (!run_reference_prec(&up, prec, same_up, why, sizeof why)) {
          memcpy(down.host[dn_h], same_up[up_h], up.size[up_h]);
          if (!run_reference_prec(&down, prec, same_down, why, sizeof why))
            CHECK(!memcmp(y, same_down[dn_y], down.size[dn_y]), "FALSIFY-QTYPE-DISPATCH: y differs from the reference's "
                  "own %s path", mixed_acc == QMOE_ACC_F64 ? "f64" : "f32");
        }
        free_outs(same_up);
        free_outs(same_down);
      }
      size_t len = strlen(case_name);
      snprintf(case_name + len, sizeof case_name - len, " nmse=%.1e maxrel=%.1e", m.nmse, m.maxrel);
    }
  }
  for (int i = 0; i < QMOE_STAGE_MAX_BUFS; i++) {
    if (bu[i]) be->free_buf(be, bu[i]);
    if (bd[i]) be->free_buf(be, bd[i]);
  }
  free(y);
  free_outs(ref_up);
  free_outs(ref_down);
  prepared_free(&up);
  prepared_free(&down);
}

/* FALSIFY-QTYPE-DISPATCH (2): a call whose qtype matches no variant of the stage fails with QMOE_EUNSUPPORTED
 * and names the tensor — never a fallback to another format's kernel. The qtype is one qmoe has a codec for
 * but the stage does not list when there is one, else a GGUF id with no codec at all. */
static const qmoe_stage_info *negative_stage;
static void test_unsupported_qtype(void) {
  if (!backend_or_skip()) return;
  const qmoe_stage_info *si = negative_stage;
  int bad = -1;
  for (size_t i = 0; i < qmoe_qtype_count() && bad < 0; i++)
    if (!qmoe_stage_has_qtype(si, qmoe_qtype_at(i)->ggml_type)) bad = qmoe_qtype_at(i)->ggml_type;
  for (int id = 0; id < 64 && bad < 0; id++)
    if (!qmoe_stage_has_qtype(si, id) && !qmoe_qtype_by_id(id)) bad = id;
  REQUIRE(bad >= 0, "every GGUF type id has a %s variant", si->name);
  char why[1024] = "";
  prepared pr;
  if (prepare(&pr, si->name, si->qtypes[0], QMOE_ACC_F32, why, sizeof why)) {
    CHECK(0, "%s", why);
    prepared_free(&pr);
    return;
  }
  qmoe_buffer *b[QMOE_STAGE_MAX_BUFS] = {0};
  qmoe_stage_call c = pr.call;
  char tensor[64];
  snprintf(tensor, sizeof tensor, "blk.7.%s_probe.weight", si->name);
  c.qtype = bad;
  c.tensor = tensor;
  int rc = 0;
  for (int i = 0; i < pr.nbuf && !rc; i++) {
    if ((rc = be->alloc(be, pr.size[i], &b[i])) || (rc = be->upload(be, b[i], 0, pr.host[i], pr.size[i])))
      CHECK(0, BACKEND_NAME " alloc/upload: %s", qmoe_last_error());
    c.buf[i] = b[i];
  }
  if (!rc) {
    qmoe_set_error("(no message)");
    rc = be->run(be, &c);
    if (rc == 0) rc = be->sync(be);
    CHECK(rc == QMOE_EUNSUPPORTED, "FALSIFY-QTYPE-DISPATCH: %s with qtype %s returned %d, want QMOE_EUNSUPPORTED (%d)",
          si->name, qmoe_qtype_name(bad), rc, QMOE_EUNSUPPORTED);
    CHECK(strstr(qmoe_last_error(), tensor) != NULL, "FALSIFY-QTYPE-DISPATCH: the error does not name tensor %s: \"%s\"",
          tensor, qmoe_last_error());
    size_t len = strlen(case_name);
    snprintf(case_name + len, sizeof case_name - len, " (qtype %s)", qmoe_qtype_name(bad));
  }
  for (int i = 0; i < pr.nbuf; i++) if (b[i]) be->free_buf(be, b[i]);
  prepared_free(&pr);
}

int main(void) {
  t_seed();
  if (qmoe_backend_open(BACKEND_NAME, &be) != 0) {
    be = NULL;
    snprintf(open_error, sizeof open_error, "%s", qmoe_last_error());
  }
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    current = &cases[i];
    snprintf(case_name, sizeof case_name, "%s/%s/%s", cases[i].stage, cases[i].qname, cases[i].acc_name);
    RUN_NAMED(case_name, test_case);
  }
  for (int a = 0; a < QMOE_ACC_COUNT; a++) {
    mixed_acc = (qmoe_acc)a;
    snprintf(case_name, sizeof case_name, "mixed_qtype_moe/q4_k+q6_k/%s", a == QMOE_ACC_F64 ? "f64" : "f32");
    RUN_NAMED(case_name, test_mixed_qtype);
  }
  for (int s = 0; s < QMOE_STAGE_TABLE_COUNT; s++) {
    negative_stage = qmoe_stage_info_get((qmoe_stage)s);
    if (!negative_stage->varies_by_qtype) continue;
    snprintf(case_name, sizeof case_name, "unsupported_qtype/%s", negative_stage->name);
    RUN_NAMED(case_name, test_unsupported_qtype);
  }
  if (be) be->close(be);
  for (int i = 0; i < POOL_QTYPES; i++) free(pool[i]);
  return T_DONE();
}
]==]

if arg and arg[0] and arg[0]:match("gen_tests%.lua$") then main(arg) end
return M
