-- interp_vs_c.lua: the generated C decoders (through "$QMOE_BIN/tests/test_quant --dequant") agree bit for
-- bit with the reference interpreter (expr.decode_block) on fresh random blocks of every quant contract:
-- random bytes with random finite float fields (subnormal, huge and negative scales included).
-- Usage: qmoe-lua tests/quant/interp_vs_c.lua BINDIR
local expr = require("expr")
local util = require("util")
local bindir = arg[1] or "build"
local driver = bindir .. "/tests/test_quant"
local NBLOCKS = 48

local seed = tonumber(os.getenv("QMOE_TEST_SEED") or "") or 0
if seed == 0 then
  local f = io.open("/dev/urandom", "rb")
  seed = f and (string.unpack("<I6", f:read(6))) or os.time()
  if f then f:close() end
end
print(string.format("# seed %d (replay with QMOE_TEST_SEED=%d)", seed, seed))
math.randomseed(seed)

local FLOAT_GEN = {
  f16 = function() -- finite f16: exponent field 0..30
    return string.pack("<I2", (math.random(0, 1) << 15) | (math.random(0, 30) << 10) | math.random(0, 1023))
  end,
  bf16 = function()
    return string.pack("<I2", (math.random(0, 1) << 15) | (math.random(0, 254) << 7) | math.random(0, 127))
  end,
  f32 = function()
    return string.pack("<I4", (math.random(0, 1) << 31) | (math.random(0, 254) << 23) | math.random(0, (1 << 23) - 1))
  end,
}

local function random_block(q)
  local b = {}
  for k = 1, q.block_bytes do b[k] = string.char(math.random(0, 255)) end
  for _, f in ipairs(q.fields) do
    local gen = FLOAT_GEN[f.type]
    if gen then
      for e = 0, f.count - 1 do
        local v = gen()
        local off = f.offset + e * #v
        for k = 1, #v do b[off + k] = v:sub(k, k) end
      end
    end
  end
  return table.concat(b)
end

local failed = 0
local tmp = os.tmpname()
for _, name in ipairs(util.list("contracts/quant", "%.ya?ml$")) do
  local q = assert(yaml.load("contracts/quant/" .. name))
  local blocks = {}
  for k = 1, NBLOCKS do blocks[k] = random_block(q) end
  local data = table.concat(blocks)
  local f = assert(io.open(tmp, "wb"))
  f:write(data)
  f:close()
  local p = io.popen(string.format("'%s' --dequant %s < '%s'", driver, q.name, tmp), "r")
  local out = p:read("a")
  local okc = p:close()
  local case = "dequant_matches_interpreter_" .. q.name
  if not okc or #out ~= 4 * NBLOCKS * q.block_elements then
    failed = failed + 1
    print(string.format("not ok %s: %s --dequant %s failed or gave %d bytes", case, driver, q.name, #out))
  else
    local want = expr.decode_block(q, data, 0, NBLOCKS)
    local bad
    for k = 1, #want do
      local got = string.unpack("<f", out, 4 * (k - 1) + 1)
      local w = want[k]
      local same = (got ~= got and w ~= w) or string.pack("<f", got) == string.pack("<f", w)
      if not same then bad = k break end
    end
    if bad then
      failed = failed + 1
      local got = string.unpack("<f", out, 4 * (bad - 1) + 1)
      print(string.format("not ok %s: element %d of block %d: C %.9g, interpreter %.9g (block bytes %s)", case,
            (bad - 1) % q.block_elements, (bad - 1) // q.block_elements, got, want[bad],
            (blocks[(bad - 1) // q.block_elements + 1]:gsub(".", function(c) return string.format("%02x", c:byte()) end))))
    else
      print("ok " .. case)
    end
  end
end
os.remove(tmp)
os.exit(failed == 0 and 0 or 1)
