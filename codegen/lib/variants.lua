-- variants.lua: the one variant list every generator uses (gen_cuda, gen_glsl, gen_tests): stage × qtype ×
-- accumulator, in stage order, qtypes by GGUF type id, accumulators in contract order. A qtype variant exists
-- only for the accumulators its quant contract allows (its `accumulators`, when it lists them).
local M = {}

local function has(list, x)
  for _, v in ipairs(list or {}) do if v == x then return true end end
  return false
end

-- list(ctx, recs) -> { { rec, stage, q, acc, stem, what } ... }. RECS: the normalized stages
-- (codegen/gen_stages.lua's stages(ctx)); stage is the stage's contract as loaded, q its quant contract or
-- nil, acc "f32"/"f64"/"q8" or nil (a stage that does not vary by it); stem "matvec__q4_k__f32", what
-- "matvec/q4_k/f32".
function M.list(ctx, recs)
  local raw = {}
  for _, st in ipairs(ctx.stages.list) do raw[st.name] = st end
  local out = {}
  for _, r in ipairs(recs) do
    local qs = r.by_qtype and r.qtypes or { false }
    local accs = r.by_acc and r.accs or { false }
    for _, q in ipairs(qs) do
      for _, acc in ipairs(accs) do
        if not q or not q.accumulators or not acc or has(q.accumulators, acc) then
          local parts = { r.name }
          if q then parts[#parts + 1] = q.name end
          if acc then parts[#parts + 1] = acc end
          out[#out + 1] = { rec = r, stage = raw[r.name], q = q or nil, acc = acc or nil,
                            stem = table.concat(parts, "__"), what = table.concat(parts, "/") }
        end
      end
    end
  end
  return out
end

return M
