-- expr.lua: the one implementation of the decode expression language of quant contracts
-- (docs/DEVELOPING.md): parser, type/bounds checker, reference interpreter and dialect-driven emitters.
--
-- API: parse(src) -> ast | nil, msg, col;  check_quant(q) -> {{path, col, msg}...};
--      decode_block(q, bytes, block_index) -> {f32 values};  emit(q, dialect) -> text;
--      dialects.c / dialects.cuda / dialects.glsl (see docs/quant.md for the dialect table fields).
local M = {}

-- ---------------------------------------------------------------------------------------------------
-- Field types: size in bytes and the expression type they read as.
M.FIELD_TYPES = {
  u8 = { size = 1, ty = "int" },  i8 = { size = 1, ty = "int" },
  u16 = { size = 2, ty = "int" }, i16 = { size = 2, ty = "int" },
  f16 = { size = 2, ty = "float" }, bf16 = { size = 2, ty = "float" }, f32 = { size = 4, ty = "float" },
}

local INT_MIN, INT_MAX = -2147483648, 2147483647

-- f32 rounding of a Lua number (double): string.pack converts with a C cast, i.e. round to nearest even.
-- Values beyond the f32 range become ±inf (C cast behaviour on IEEE hosts).
local function f32(x)
  if x ~= x then return x end
  if x > 3.4028235677973366e38 or x < -3.4028235677973366e38 then
    -- Round-to-nearest: anything at or above max + half ulp overflows.
    if x >= 3.4028235677973366e38 + 2^103 then return math.huge end
    if x <= -(3.4028235677973366e38 + 2^103) then return -math.huge end
  end
  return (string.unpack("<f", string.pack("<f", x)))
end
M.f32 = f32

local function f16_to_number(h)
  local s = (h >> 15) & 1
  local e = (h >> 10) & 0x1F
  local m = h & 0x3FF
  local v
  if e == 0 then v = m * 2.0 ^ -24
  elseif e == 31 then v = (m == 0) and math.huge or (0 / 0)
  else v = (1024 + m) * 2.0 ^ (e - 25) end
  if s == 1 then v = -v end
  return v
end
M.f16_to_number = f16_to_number

local function bf16_to_number(h)
  return (string.unpack("<f", string.pack("<I4", h << 16)))
end

-- ---------------------------------------------------------------------------------------------------
-- Lexer

local OPS3 = {}
local OPS2 = { ["||"] = true, ["&&"] = true, ["=="] = true, ["!="] = true, ["<="] = true, [">="] = true,
               ["<<"] = true, [">>"] = true }
local OPS1 = "?:|^&<>+-*/%~!()[]{},"

local function lex(src)
  local toks, pos, n = {}, 1, #src
  while true do
    local s = src:match("^[ \t\r\n]*()", pos)
    pos = s
    if pos > n then break end
    local c = src:sub(pos, pos)
    if c:match("[%a_]") then
      local id = src:match("^[%a_][%w_]*", pos)
      toks[#toks + 1] = { t = "ident", v = id, col = pos }
      pos = pos + #id
    elseif c:match("%d") or (c == "." and src:sub(pos + 1, pos + 1):match("%d")) then
      local hex = src:match("^0[xX]%x+", pos)
      if hex then
        local after = src:sub(pos + #hex, pos + #hex)
        if after:match("[%w_%.]") then return nil, "malformed number", pos end
        local v = tonumber(hex:sub(3), 16)
        if v > INT_MAX then return nil, "integer literal " .. hex .. " does not fit in 32-bit int", pos end
        toks[#toks + 1] = { t = "int", v = v, col = pos }
        pos = pos + #hex
      else
        local num = src:match("^%d*%.?%d*", pos)
        local exp = src:match("^[eE][+-]?%d+", pos + #num)
        local text = num .. (exp or "")
        local after = src:sub(pos + #text, pos + #text)
        if after:match("[%w_%.]") then return nil, "malformed number", pos end
        if num:find(".", 1, true) then
          toks[#toks + 1] = { t = "float", v = f32(tonumber(text)), col = pos, text = text }
        elseif exp then
          return nil, "float literal '" .. text .. "' needs a '.'", pos
        else
          local v = math.tointeger(tonumber(num))
          if not v or v > INT_MAX then return nil, "integer literal " .. num .. " does not fit in 32-bit int", pos end
          toks[#toks + 1] = { t = "int", v = v, col = pos }
        end
        pos = pos + #text
      end
    else
      local two = src:sub(pos, pos + 1)
      if OPS2[two] then
        toks[#toks + 1] = { t = "op", v = two, col = pos }
        pos = pos + 2
      elseif OPS1:find(c, 1, true) then
        toks[#toks + 1] = { t = "op", v = c, col = pos }
        pos = pos + 1
      else
        return nil, "unexpected character '" .. c .. "'", pos
      end
    end
  end
  toks[#toks + 1] = { t = "eof", v = "end of expression", col = n + 1 }
  return toks
end
local _ = OPS3

-- ---------------------------------------------------------------------------------------------------
-- Parser (precedence climbing over the grammar's binary levels, lowest first)

local LEVELS = {
  { "||" }, { "&&" }, { "|" }, { "^" }, { "&" }, { "==", "!=" }, { "<", "<=", ">", ">=" },
  { "<<", ">>" }, { "+", "-" }, { "*", "/", "%" },
}
local LEVEL_OF = {}
for lv, ops in ipairs(LEVELS) do for _, op in ipairs(ops) do LEVEL_OF[op] = lv end end

local ParseError = {}
local TABLE_MAX = 256

local function parse_tokens(toks)
  local p = 1
  local function peek() return toks[p] end
  local function fail(msg, col) error(setmetatable({ msg = msg, col = col }, ParseError), 0) end
  local function describe(t)
    if t.t == "eof" then return "end of expression" end
    return "'" .. tostring(t.text or t.v) .. "'"
  end
  local function expect(op)
    local t = peek()
    if t.t ~= "op" or t.v ~= op then fail("expected '" .. op .. "' but found " .. describe(t), t.col) end
    p = p + 1
    return t
  end
  local parse_expr, parse_binary

  local function parse_primary()
    local t = peek()
    if t.t == "int" then p = p + 1 return { k = "int", v = t.v, col = t.col } end
    if t.t == "float" then p = p + 1 return { k = "float", v = t.v, col = t.col, text = t.text } end
    if t.t == "ident" then
      p = p + 1
      local nt = peek()
      if nt.t == "op" and nt.v == "(" then
        p = p + 1
        local a = parse_expr()
        expect(")")
        return { k = "call", fn = t.v, a = a, col = t.col }
      end
      return { k = "name", name = t.v, col = t.col }
    end
    if t.t == "op" and t.v == "(" then
      p = p + 1
      local e = parse_expr()
      expect(")")
      return e
    end
    if t.t == "op" and t.v == "{" then
      -- Table literal: {c0, c1, ...}[index], constants only (an optional '-' before each), always indexed.
      p = p + 1
      local items, fl = {}, false
      repeat
        local neg = false
        local it = peek()
        if it.t == "op" and it.v == "-" then neg = true p = p + 1 it = peek() end
        if it.t ~= "int" and it.t ~= "float" then fail("a table holds number constants; found " .. describe(it), it.col) end
        p = p + 1
        local v = neg and -it.v or it.v
        if it.t == "float" then fl = true end
        if #items == TABLE_MAX then fail("a table holds at most " .. TABLE_MAX .. " numbers", it.col) end
        items[#items + 1] = v
        local sep = peek()
        if sep.t == "op" and sep.v == "," then p = p + 1 elseif not (sep.t == "op" and sep.v == "}") then
          fail("expected ',' or '}' but found " .. describe(sep), sep.col)
        end
      until peek().t == "op" and peek().v == "}"
      p = p + 1
      local ob = peek()
      if not (ob.t == "op" and ob.v == "[") then fail("a table literal must be indexed: {...}[index]", ob.col) end
      p = p + 1
      local idx = parse_expr()
      expect("]")
      if fl then for k, v in ipairs(items) do items[k] = f32(v + 0.0) end end
      return { k = "table", items = items, fl = fl, idx = idx, col = t.col }
    end
    fail("expected a number, a name, '(' or '{' but found " .. describe(t), t.col)
  end

  local function parse_postfix()
    local e = parse_primary()
    local t = peek()
    if t.t == "op" and t.v == "[" then
      p = p + 1
      local idx = parse_expr()
      expect("]")
      if e.k ~= "name" then fail("only a field name can be indexed", t.col) end
      e = { k = "index", name = e.name, idx = idx, col = e.col }
      local t2 = peek()
      if t2.t == "op" and t2.v == "[" then fail("a field has one dimension; only one index allowed", t2.col) end
    end
    return e
  end

  local function parse_unary()
    local t = peek()
    if t.t == "op" and (t.v == "-" or t.v == "~" or t.v == "!") then
      p = p + 1
      return { k = "un", op = t.v, a = parse_unary(), col = t.col }
    end
    return parse_postfix()
  end

  function parse_binary(lv)
    if lv > #LEVELS then return parse_unary() end
    local a = parse_binary(lv + 1)
    while true do
      local t = peek()
      if t.t == "op" and LEVEL_OF[t.v] == lv then
        p = p + 1
        local b = parse_binary(lv + 1)
        a = { k = "bin", op = t.v, a = a, b = b, col = t.col }
      else
        return a
      end
    end
  end

  -- cond := or ("?" expr ":" cond)?
  local function parse_cond()
    local c = parse_binary(1)
    local t = peek()
    if t.t == "op" and t.v == "?" then
      p = p + 1
      local a = parse_expr()
      expect(":")
      local b = parse_cond()
      return { k = "cond", c = c, a = a, b = b, col = t.col }
    end
    return c
  end
  parse_expr = parse_cond

  local e = parse_expr()
  local t = peek()
  if t.t ~= "eof" then fail("unexpected " .. describe(t) .. " after a complete expression", t.col) end
  return e
end

-- parse(src) -> ast | nil, msg, col (1-based column in src)
function M.parse(src)
  if type(src) ~= "string" then return nil, "expression must be a string", 1 end
  local toks, msg, col = lex(src)
  if not toks then return nil, msg, col end
  local ok, res = pcall(parse_tokens, toks)
  if ok then return res end
  if getmetatable(res) == ParseError then return nil, res.msg, res.col end
  error(res, 0)
end

-- ---------------------------------------------------------------------------------------------------
-- Type checking. env: name -> {kind = "i"|"field"|"let", ty = "int"|"float", field = f, pure = bool}
-- annotates each node with .ty (and .pure: depends only on i and pure lets).

local CheckError = {}
-- Column where the text of NODE begins (a binary node's own col is its operator's).
local function start_col(node)
  if node.k == "bin" then return start_col(node.a) end
  if node.k == "cond" then return start_col(node.c) end
  return node.col
end
local function cfail(msg, col) error(setmetatable({ msg = msg, col = col }, CheckError), 0) end

local INT_ONLY = { ["%"] = true, ["<<"] = true, [">>"] = true, ["&"] = true, ["|"] = true, ["^"] = true,
                   ["&&"] = true, ["||"] = true }
local CMP = { ["=="] = true, ["!="] = true, ["<"] = true, ["<="] = true, [">"] = true, [">="] = true }

local function typecheck(node, env)
  local k = node.k
  if k == "int" then node.ty, node.pure = "int", true
  elseif k == "float" then node.ty, node.pure = "float", true
  elseif k == "name" then
    local b = env[node.name]
    if not b then cfail("unknown name '" .. node.name .. "'", node.col) end
    if b.kind == "field" and b.field.count ~= 1 then
      cfail("field '" .. node.name .. "' is an array of " .. b.field.count .. "; index it: " .. node.name .. "[...]", node.col)
    end
    node.ty, node.pure, node.bind = b.ty, b.pure, b
  elseif k == "index" then
    local b = env[node.name]
    if not b then cfail("unknown name '" .. node.name .. "'", node.col) end
    if b.kind ~= "field" then cfail("'" .. node.name .. "' is not a field and cannot be indexed", node.col) end
    if b.field.count == 1 then cfail("field '" .. node.name .. "' is a scalar (count 1); do not index it", node.col) end
    typecheck(node.idx, env)
    if node.idx.ty ~= "int" then cfail("index of '" .. node.name .. "' must be int, not float", start_col(node.idx)) end
    if not node.idx.pure then
      cfail("index of '" .. node.name .. "' depends on block data; indexes may use only i and lets computed from i",
            start_col(node.idx))
    end
    node.ty, node.pure, node.bind = b.ty, false, b
  elseif k == "table" then
    typecheck(node.idx, env)
    if node.idx.ty ~= "int" then cfail("index of a table must be int, not float", start_col(node.idx)) end
    node.ty, node.pure = node.fl and "float" or "int", node.idx.pure
  elseif k == "call" then
    if node.fn ~= "float" and node.fn ~= "int" then
      cfail("unknown function '" .. node.fn .. "' (only float(x) and int(x) exist)", node.col)
    end
    typecheck(node.a, env)
    node.ty, node.pure = node.fn, node.a.pure
  elseif k == "un" then
    typecheck(node.a, env)
    if (node.op == "~" or node.op == "!") and node.a.ty ~= "int" then
      cfail("operator '" .. node.op .. "' takes an int, not a float", node.col)
    end
    node.ty, node.pure = node.a.ty, node.a.pure
  elseif k == "bin" then
    typecheck(node.a, env)
    typecheck(node.b, env)
    local op = node.op
    if INT_ONLY[op] and (node.a.ty ~= "int" or node.b.ty ~= "int") then
      cfail("operator '" .. op .. "' takes ints; use int(x) to convert a float", node.col)
    end
    if CMP[op] or op == "&&" or op == "||" then node.ty = "int"
    elseif node.a.ty == "float" or node.b.ty == "float" then node.ty = "float"
    else node.ty = "int" end
    node.pure = node.a.pure and node.b.pure
  elseif k == "cond" then
    typecheck(node.c, env)
    typecheck(node.a, env)
    typecheck(node.b, env)
    if node.c.ty ~= "int" then cfail("condition of '?:' must be int (use a comparison)", start_col(node.c)) end
    node.ty = (node.a.ty == "float" or node.b.ty == "float") and "float" or "int"
    node.pure = node.c.pure and node.a.pure and node.b.pure
  else
    error("expr: unknown node kind " .. tostring(k))
  end
  return node.ty
end

-- ---------------------------------------------------------------------------------------------------
-- Evaluation. ctx = {env values: name -> value, read = function(field, index) -> value | nil}
-- A value read of nil means "unknown" (abstract evaluation for bounds checks); ints are Lua integers,
-- floats Lua floats holding f32 values.

local EvalError = {}
local function efail(msg, col) error(setmetatable({ msg = msg, col = col }, EvalError), 0) end

local function int_result(v, col, what)
  if v < INT_MIN or v > INT_MAX then efail("int overflow in " .. what .. " (result " .. v .. ")", col) end
  return v
end

local function tofloat(v) if math.type(v) == "integer" then return f32(v + 0.0) end return v end

local function cdiv(a, b, col)
  if b == 0 then efail("integer division by zero", col) end
  local q = a // b
  if q < 0 and q * b ~= a then q = q + 1 end -- truncate toward zero, as C
  return q
end

local eval
-- Evaluates NODE; returns the value, or nil when it depends on unknown data (abstract mode).
-- on_index(node, index_value) is called for each index evaluated (bounds checks).
function eval(node, ctx)
  local k = node.k
  if k == "int" or k == "float" then return node.v end
  if k == "name" then
    local b = node.bind
    if b.kind == "field" then return ctx.read(b.field, 0, node) end
    return ctx.vals[node.name]
  end
  if k == "index" then
    local idx = eval(node.idx, ctx)
    if idx == nil then efail("index of '" .. node.name .. "' is unknown", start_col(node.idx)) end
    if idx < 0 or idx >= node.bind.field.count then
      efail(string.format("index %d of '%s' is out of range 0..%d", idx, node.name, node.bind.field.count - 1), start_col(node.idx))
    end
    return ctx.read(node.bind.field, idx, node)
  end
  if k == "table" then
    local n = #node.items
    local idx = eval(node.idx, ctx)
    if idx == nil then
      -- Data-dependent index (a code read from the block): prove its range instead.
      local lo, hi = M.range_of(node.idx, ctx)
      if lo < 0 or hi > n - 1 then
        efail(string.format("index of the %d-entry table may be outside 0..%d: it can range over %s..%s", n, n - 1,
                            lo == INT_MIN and "-2^31" or tostring(lo), hi == INT_MAX and "2^31-1" or tostring(hi)),
              start_col(node.idx))
      end
      return nil
    end
    if idx < 0 or idx >= n then
      efail(string.format("index %d of a %d-entry table is out of range 0..%d", idx, n, n - 1), start_col(node.idx))
    end
    return node.items[idx + 1]
  end
  if k == "call" then
    local a = eval(node.a, ctx)
    if a == nil then return nil end
    if node.fn == "float" then return tofloat(a) end
    if math.type(a) == "integer" then return a end
    if a ~= a or a >= 2147483648.0 or a <= -2147483649.0 then efail("int(" .. tostring(a) .. ") is out of int range", node.col) end
    local t = a >= 0 and math.floor(a) or math.ceil(a)
    return math.tointeger(t)
  end
  if k == "un" then
    local a = eval(node.a, ctx)
    if a == nil then return nil end
    if node.op == "-" then
      if node.ty == "int" then return int_result(-a, node.col, "negation") end
      return -a
    elseif node.op == "~" then return ~a
    else return (a == 0) and 1 or 0 end
  end
  if k == "cond" then
    local c = eval(node.c, ctx)
    if c == nil then
      -- Unknown condition: both branches may run; evaluate both for their checks.
      eval(node.a, ctx)
      eval(node.b, ctx)
      return nil
    end
    local v = eval(c ~= 0 and node.a or node.b, ctx)
    if ctx.both_arms then
      -- Checking: GPU kernels evaluate both arms (branch-free selects), so the arm not taken must be in
      -- bounds and free of errors too.
      local ok, err = pcall(eval, c ~= 0 and node.b or node.a, ctx)
      if not ok then
        if getmetatable(err) == EvalError then
          efail(err.msg .. " (in the arm of '?:' not taken here; GPU kernels evaluate both arms)", err.col)
        end
        error(err, 0)
      end
    end
    if v ~= nil and node.ty == "float" then v = tofloat(v) end
    return v
  end
  -- binary
  local op = node.op
  if op == "&&" or op == "||" then
    local a = eval(node.a, ctx)
    if a == nil then eval(node.b, ctx) return nil end
    if op == "&&" and a == 0 then return 0 end
    if op == "||" and a ~= 0 then return 1 end
    local b = eval(node.b, ctx)
    if b == nil then return nil end
    return (b ~= 0) and 1 or 0
  end
  local a = eval(node.a, ctx)
  local b = eval(node.b, ctx)
  if a == nil or b == nil then return nil end
  local fl = node.a.ty == "float" or node.b.ty == "float"
  if CMP[op] then
    if fl then a, b = tofloat(a), tofloat(b) end
    local r
    if op == "==" then r = a == b elseif op == "!=" then r = a ~= b
    elseif op == "<" then r = a < b elseif op == "<=" then r = a <= b
    elseif op == ">" then r = a > b else r = a >= b end
    return r and 1 or 0
  end
  if fl then
    a, b = tofloat(a), tofloat(b)
    -- One f32 rounding per operation; double then round is exact for + - * / (53 >= 2·24 + 2).
    if op == "+" then return f32(a + b) elseif op == "-" then return f32(a - b)
    elseif op == "*" then return f32(a * b) else return f32(a / b) end
  end
  if op == "+" then return int_result(a + b, node.col, "'+'")
  elseif op == "-" then return int_result(a - b, node.col, "'-'")
  elseif op == "*" then return int_result(a * b, node.col, "'*'")
  elseif op == "/" then return int_result(cdiv(a, b, node.col), node.col, "'/'")
  elseif op == "%" then local q = cdiv(a, b, node.col) return a - q * b
  elseif op == "&" then return a & b
  elseif op == "|" then return a | b
  elseif op == "^" then return a ~ b
  elseif op == "<<" or op == ">>" then
    if b < 0 or b > 31 then efail("shift count " .. b .. " is outside 0..31", node.col) end
    if op == "<<" then
      if a < 0 then efail("left shift of a negative int", node.col) end
      return int_result(a << b, node.col, "'<<'")
    end
    return a >> b | ((a < 0) and ~(-1 >> b) or 0) -- arithmetic shift, as C compilers do for int
  end
  error("expr: unknown operator " .. op)
end

-- ---------------------------------------------------------------------------------------------------
-- Ranges of int expressions over all block data (interval arithmetic), to prove a data-dependent table
-- index in bounds. ctx.vals holds known values (i, lets of i), ctx.ranges {lo, hi} of data-dependent int
-- lets. Conservative: any doubt widens to the whole int range.

local FIELD_RANGE = { u8 = { 0, 255 }, i8 = { -128, 127 }, u16 = { 0, 65535 }, i16 = { -32768, 32767 } }

local function clamp_range(lo, hi)
  if lo < INT_MIN or hi > INT_MAX then return INT_MIN, INT_MAX end
  return lo, hi
end

local function bits_cover(v) -- smallest 2^k - 1 >= v (v >= 0)
  local m = 0
  while m < v do m = m * 2 + 1 end
  return m
end

function M.range_of(node, ctx)
  local k = node.k
  if node.ty == "float" then return INT_MIN, INT_MAX end
  if k == "int" then return node.v, node.v end
  if k == "name" then
    local b = node.bind
    if b.kind == "field" then local r = FIELD_RANGE[b.field.type] return r[1], r[2] end
    local v = ctx.vals[node.name]
    if v ~= nil then return v, v end
    local r = ctx.ranges and ctx.ranges[node.name]
    if r then return r[1], r[2] end
    return INT_MIN, INT_MAX
  end
  if k == "index" then local r = FIELD_RANGE[node.bind.field.type] return r[1], r[2] end
  if k == "table" then
    local lo, hi = math.huge, -math.huge
    for _, v in ipairs(node.items) do lo, hi = math.min(lo, v), math.max(hi, v) end
    return lo, hi
  end
  if k == "call" then
    if node.a.ty == "int" then return M.range_of(node.a, ctx) end
    return INT_MIN, INT_MAX
  end
  if k == "un" then
    if node.op == "!" then return 0, 1 end
    local lo, hi = M.range_of(node.a, ctx)
    if node.op == "-" then return clamp_range(-hi, -lo) end
    return ~hi, ~lo
  end
  if k == "cond" then
    local alo, ahi = M.range_of(node.a, ctx)
    local blo, bhi = M.range_of(node.b, ctx)
    return math.min(alo, blo), math.max(ahi, bhi)
  end
  local op = node.op
  if CMP[op] or op == "&&" or op == "||" then return 0, 1 end
  local alo, ahi = M.range_of(node.a, ctx)
  local blo, bhi = M.range_of(node.b, ctx)
  if op == "+" then return clamp_range(alo + blo, ahi + bhi) end
  if op == "-" then return clamp_range(alo - bhi, ahi - blo) end
  if op == "*" or op == "/" then
    if op == "/" and blo <= 0 and bhi >= 0 then return INT_MIN, INT_MAX end
    local c = {}
    for _, x in ipairs({ alo, ahi }) do
      for _, y in ipairs({ blo, bhi }) do
        if op == "*" then c[#c + 1] = x * y
        else local q = x // y if q < 0 and q * y ~= x then q = q + 1 end c[#c + 1] = q end
      end
    end
    return clamp_range(math.min(c[1], c[2], c[3], c[4]), math.max(c[1], c[2], c[3], c[4]))
  end
  if op == "%" then
    if blo <= 0 and bhi >= 0 then return INT_MIN, INT_MAX end
    local m = math.max(math.abs(blo), math.abs(bhi)) - 1
    if alo >= 0 then return 0, math.min(ahi, m) end
    if ahi <= 0 then return math.max(alo, -m), 0 end
    return -m, m
  end
  if op == "&" then
    if alo >= 0 and blo >= 0 then return 0, math.min(ahi, bhi) end
    if alo >= 0 then return 0, ahi end
    if blo >= 0 then return 0, bhi end
    return INT_MIN, INT_MAX
  end
  if op == "|" or op == "^" then
    if alo >= 0 and blo >= 0 then return 0, bits_cover(math.max(ahi, bhi)) end
    return INT_MIN, INT_MAX
  end
  if op == "<<" then
    if alo >= 0 and blo >= 0 and bhi <= 31 then return clamp_range(alo << blo, ahi << bhi) end
    return INT_MIN, INT_MAX
  end
  if op == ">>" then
    if blo >= 0 and bhi <= 31 then
      local function sh(x, n) return x // (1 << n) end -- arithmetic shift
      return math.min(sh(alo, blo), sh(alo, bhi)), math.max(sh(ahi, blo), sh(ahi, bhi))
    end
    return INT_MIN, INT_MAX
  end
  return INT_MIN, INT_MAX
end

-- ---------------------------------------------------------------------------------------------------
-- Contract checks

local function fields_of(q) return type(q.fields) == "table" and q.fields or {} end
local function lets_of(q) return (type(q.decode) == "table" and type(q.decode.let) == "table") and q.decode.let or {} end

-- Builds the checked program of a contract: {lets = {{name, ast}}, value = ast, env}. Appends errors.
local function compile(q, errs)
  local function add(path, col, msg) errs[#errs + 1] = { path = path, col = col, msg = msg } end
  local env = { i = { kind = "i", ty = "int", pure = true } }
  local ok = true
  for fi, f in ipairs(fields_of(q)) do
    local path = "fields[" .. fi .. "]"
    local ft = M.FIELD_TYPES[f.type]
    if type(f.name) ~= "string" or not f.name:match("^[%a_][%w_]*$") then
      add(path .. ".name", nil, "field name must be an identifier") ok = false
    elseif env[f.name] then
      add(path .. ".name", nil, "field '" .. f.name .. "' is defined twice (or shadows 'i')") ok = false
    end
    if not ft then
      local names = {}
      for n in pairs(M.FIELD_TYPES) do names[#names + 1] = n end
      table.sort(names)
      add(path .. ".type", nil, "unknown field type '" .. tostring(f.type) .. "' (one of " .. table.concat(names, ", ") .. ")")
      ok = false
    end
    if math.type(f.count) ~= "integer" or f.count < 1 then add(path .. ".count", nil, "count must be an integer >= 1") ok = false end
    if math.type(f.offset) ~= "integer" or f.offset < 0 then add(path .. ".offset", nil, "offset must be an integer >= 0") ok = false end
    if ft and math.type(f.count) == "integer" and math.type(f.offset) == "integer" and math.type(q.block_bytes) == "integer"
       and f.offset + f.count * ft.size > q.block_bytes then
      add(path, nil, string.format("field '%s' (bytes %d..%d) extends past block_bytes %d", tostring(f.name), f.offset,
          f.offset + f.count * ft.size - 1, q.block_bytes))
      ok = false
    end
    if type(f.name) == "string" and ft and not env[f.name] then
      env[f.name] = { kind = "field", ty = ft.ty, field = f, pure = false }
    end
  end
  if math.type(q.block_elements) ~= "integer" or q.block_elements < 1 then
    add("block_elements", nil, "block_elements must be an integer >= 1") ok = false
  end
  if math.type(q.block_bytes) ~= "integer" or q.block_bytes < 1 then
    add("block_bytes", nil, "block_bytes must be an integer >= 1") ok = false
  end
  local prog = { lets = {}, env = env }
  for li, l in ipairs(lets_of(q)) do
    local path = "decode.let[" .. li .. "]"
    if type(l.name) ~= "string" or not l.name:match("^[%a_][%w_]*$") then
      add(path .. ".name", nil, "let name must be an identifier") ok = false
    elseif l.name == "float" or l.name == "int" then
      add(path .. ".name", nil, "'" .. l.name .. "' is a cast and cannot be a let name") ok = false
    elseif env[l.name] then
      local b = env[l.name]
      add(path .. ".name", nil, "let '" .. l.name .. "' shadows " ..
          (b.kind == "i" and "the element index i" or (b.kind == "field" and "a field" or "an earlier let")) .. "; rename it")
      ok = false
    end
    local ast, msg, col = M.parse(l.expr)
    if not ast then
      add(path .. ".expr", col, msg) ok = false
    else
      local tok, terr = pcall(typecheck, ast, env)
      if not tok then
        if getmetatable(terr) ~= CheckError then error(terr, 0) end
        add(path .. ".expr", terr.col, terr.msg) ok = false
      elseif type(l.name) == "string" and not env[l.name] then
        env[l.name] = { kind = "let", ty = ast.ty, pure = ast.pure }
        prog.lets[#prog.lets + 1] = { name = l.name, ast = ast, path = path .. ".expr" }
      end
    end
  end
  local vsrc = type(q.decode) == "table" and q.decode.value or nil
  if vsrc == nil then
    add("decode.value", nil, "decode.value is missing") ok = false
  else
    local ast, msg, col = M.parse(vsrc)
    if not ast then add("decode.value", col, msg) ok = false
    else
      local tok, terr = pcall(typecheck, ast, env)
      if not tok then
        if getmetatable(terr) ~= CheckError then error(terr, 0) end
        add("decode.value", terr.col, terr.msg) ok = false
      elseif ast.ty ~= "float" then
        add("decode.value", 1, "value must be float (use float(x) to convert an int)") ok = false
      else
        prog.value = ast
      end
    end
  end
  return ok and prog or nil
end

-- Reads element IDX of field F from BYTES at block byte offset BASE (0-based).
local function read_field(bytes, base, f, idx)
  local off = base + f.offset + idx * M.FIELD_TYPES[f.type].size + 1
  local t = f.type
  if t == "u8" then return (string.unpack("<I1", bytes, off))
  elseif t == "i8" then return (string.unpack("<i1", bytes, off))
  elseif t == "u16" then return (string.unpack("<I2", bytes, off))
  elseif t == "i16" then return (string.unpack("<i2", bytes, off))
  elseif t == "f16" then return f16_to_number(string.unpack("<I2", bytes, off))
  elseif t == "bf16" then return bf16_to_number(string.unpack("<I2", bytes, off))
  else return (string.unpack("<f", bytes, off)) end
end

-- Runs lets and value for element I. READ supplies field values (nil = unknown). Returns value or nil.
local run_where -- path of the let (or value) run_element is evaluating, for error messages
local function run_element(prog, i, read)
  local ctx = { vals = { i = i }, read = read }
  for _, l in ipairs(prog.lets) do
    run_where = l.path
    local v = eval(l.ast, ctx)
    if v ~= nil and l.ast.ty == "float" then v = tofloat(v) end
    ctx.vals[l.name] = v
  end
  run_where = "decode.value"
  local v = eval(prog.value, ctx)
  if v ~= nil then v = tofloat(v) end
  return v, ctx
end

local function unhex(s)
  if type(s) ~= "string" then return nil, "bytes must be a hex string" end
  s = s:gsub("%s", "")
  if #s % 2 ~= 0 then return nil, "hex string has an odd number of digits" end
  local bad = s:find("[^%x]")
  if bad then return nil, "non-hex character '" .. s:sub(bad, bad) .. "' at digit " .. bad end
  return (s:gsub("%x%x", function(h) return string.char(tonumber(h, 16)) end))
end
M.unhex = unhex

local function f32_bits(x) return (string.unpack("<I4", string.pack("<f", x))) end

local function fmt_f32(x)
  return string.format("%.9g (0x%08x)", x, f32_bits(x))
end

-- check_quant(q) -> list of {path, col, msg}; empty when the contract's decode rule is valid.
function M.check_quant(q)
  local errs = {}
  local function add(path, col, msg) errs[#errs + 1] = { path = path, col = col, msg = msg } end
  local prog = compile(q, errs)
  if not prog then return errs end
  -- Bounds and evaluation checks for every i, with unknown block data.
  local function unknown_read() return nil end
  local where_of = {}
  for _, l in ipairs(prog.lets) do where_of[l.ast] = l.path end
  where_of[prog.value] = "decode.value"
  local reported = {}
  for i = 0, q.block_elements - 1 do
    local ctx = { vals = { i = i }, ranges = {}, read = unknown_read, both_arms = true }
    local items = {}
    for _, l in ipairs(prog.lets) do items[#items + 1] = { l.ast, l.path, l.name } end
    items[#items + 1] = { prog.value, "decode.value" }
    for _, it in ipairs(items) do
      if not reported[it[2]] then
        local ok, v = pcall(eval, it[1], ctx)
        if not ok then
          if getmetatable(v) ~= EvalError then error(v, 0) end
          reported[it[2]] = true
          add(it[2], v.col, v.msg .. " at i = " .. i)
          v = nil
        end
        if it[3] then
          if v ~= nil and it[1].ty == "float" then v = tofloat(v) end
          ctx.vals[it[3]] = v
          if v == nil and it[1].ty == "int" then ctx.ranges[it[3]] = { M.range_of(it[1], ctx) } end
        end
      end
    end
    if next(reported) then break end
  end
  if next(reported) then return errs end
  -- Test vectors decode to exactly the listed f32 values.
  local tvs = q.test_vectors
  if tvs ~= nil and type(tvs) ~= "table" then add("test_vectors", nil, "test_vectors must be a list") return errs end
  for ti, tv in ipairs(tvs or {}) do
    local path = "test_vectors[" .. ti .. "]"
    local bytes, herr = unhex(tv.bytes)
    if not bytes then add(path .. ".bytes", nil, herr)
    elseif #bytes == 0 or #bytes % q.block_bytes ~= 0 then
      add(path .. ".bytes", nil, string.format("%d bytes is not a whole number of %d-byte blocks", #bytes, q.block_bytes))
    elseif type(tv.values) ~= "table" then
      add(path .. ".values", nil, "values must be a list of numbers")
    else
      local nb = #bytes // q.block_bytes
      if #tv.values ~= nb * q.block_elements then
        add(path .. ".values", nil, string.format("%d values listed; %d block(s) of %d elements decode to %d",
            #tv.values, nb, q.block_elements, nb * q.block_elements))
      else
        local ok, res = pcall(M.decode_block, q, bytes, 0, nb, prog)
        if not ok then
          if type(res) == "table" and res.msg then add(res.path or "decode.value", res.col, res.msg)
          else error(res, 0) end
        else
          for vi, want in ipairs(tv.values) do
            if type(want) ~= "number" then
              add(path .. ".values[" .. vi .. "]", nil, "value must be a number") break
            end
            local w = (math.type(want) == "integer") and f32(want + 0.0) or f32(want)
            local got = res[vi]
            local same = (got ~= got and w ~= w) or (got == w and f32_bits(got) == f32_bits(w))
            if not same then
              add(path .. ".values[" .. vi .. "]", nil, string.format(
                "decodes to %s but the vector lists %s (element %d of block %d)", fmt_f32(got), fmt_f32(w),
                (vi - 1) % q.block_elements, (vi - 1) // q.block_elements))
              break
            end
          end
        end
      end
    end
  end
  return errs
end

-- decode_block(q, bytes, block_index [, nblocks]) -> array of f32 values (Lua numbers) of block(s)
-- block_index (0-based) .. +nblocks-1 of BYTES. Raises {path, col, msg} tables on evaluation errors and
-- a string error when the contract is invalid.
function M.decode_block(q, bytes, block_index, nblocks, prog)
  if not prog then
    local errs = {}
    prog = compile(q, errs)
    if not prog then
      local e = errs[1]
      error(string.format("%s: %s: %s", tostring(q.name), e.path, e.msg), 0)
    end
  end
  nblocks = nblocks or 1
  local out = {}
  for blk = block_index, block_index + nblocks - 1 do
    local base = blk * q.block_bytes
    if base + q.block_bytes > #bytes then
      error(string.format("block %d needs bytes %d..%d but only %d bytes given", blk, base, base + q.block_bytes - 1, #bytes), 0)
    end
    local function read(f, idx) return read_field(bytes, base, f, idx) end
    for i = 0, q.block_elements - 1 do
      local ok, v, ctx = pcall(run_element, prog, i, read)
      if not ok then
        if getmetatable(v) == EvalError then
          error({ path = run_where, col = v.col, msg = v.msg .. string.format(" at i = %d of block %d", i, blk) }, 0)
        end
        error(v, 0)
      end
      local _ = ctx
      out[#out + 1] = v
    end
  end
  return out
end

-- ---------------------------------------------------------------------------------------------------
-- Emitters

local function hexfloat(x)
  if x == 0 then return (1 / x < 0) and "-0.0" or "0.0" end
  return string.format("%a", x)
end

-- Dialects. See docs/quant.md for the meaning of each field.
M.dialects = {}

local C_LOADS = {
  u8 = "(int)%s[%s]",
  i8 = "(int)(int8_t)%s[%s]",
  u16 = "(int)qmoe_q_rd_u16(%s + %s)",
  i16 = "(int)(int16_t)qmoe_q_rd_u16(%s + %s)",
  f16 = "qmoe_q_f16(qmoe_q_rd_u16(%s + %s))",
  bf16 = "qmoe_q_bf16(qmoe_q_rd_u16(%s + %s))",
  f32 = "qmoe_q_rd_f32(%s + %s)",
}

local C_PRELUDE = [[
#include <stdint.h>
#include <string.h>
/* Little-endian loads from a byte-addressed block and exact f16/bf16 -> f32 conversions. */
static inline uint32_t qmoe_q_rd_u16(const uint8_t *p) { return (uint32_t)p[0] | (uint32_t)p[1] << 8; }
static inline float qmoe_q_rd_f32(const uint8_t *p) {
  uint32_t u = (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
  float f;
  memcpy(&f, &u, 4);
  return f;
}
static inline float qmoe_q_bits_f32(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
static inline float qmoe_q_f16(uint32_t h) {
  uint32_t s = (h & 0x8000u) << 16, e = (h >> 10) & 0x1Fu, m = h & 0x3FFu;
  if (e == 0x1Fu) return qmoe_q_bits_f32(s | 0x7F800000u | m << 13);   /* inf / nan */
  if (e == 0) {                                                          /* zero / subnormal: m * 2^-24 */
    float v = (float)m * 0x1p-24f;                                       /* exact: m < 2^10 */
    return s ? -v : v;
  }
  return qmoe_q_bits_f32(s | (e + 112u) << 23 | m << 13);
}
static inline float qmoe_q_bf16(uint32_t h) { return qmoe_q_bits_f32(h << 16); }
]]

M.dialects.c = {
  name = "c",
  prelude = C_PRELUDE,
  fn_prefix = "static inline",
  block_type = "const uint8_t *",
  block_param = "b",
  int_t = "int", float_t = "float",
  load = function(ftype, byte_off) return string.format(C_LOADS[ftype], "b", byte_off) end,
  fmul = function(a, b) return "(" .. a .. " * " .. b .. ")" end,
  fadd = function(a, b) return "(" .. a .. " + " .. b .. ")" end,
  fsub = function(a, b) return "(" .. a .. " - " .. b .. ")" end,
  fdiv = function(a, b) return "(" .. a .. " / " .. b .. ")" end,
  to_float = function(x) return "(float)" .. x end,
  to_int = function(x) return "(int)" .. x end,
  float_lit = function(v) return hexfloat(v) .. "f" end,
  truth = function(x) return x end,          -- int expression -> condition
  from_bool = function(x) return x end,      -- comparison/logical -> int
  decl_int = "const int", decl_float = "const float",
  table_decl = function(name, ty, n, items) return string.format("static const %s %s[%d] = { %s };", ty, name, n, items) end,
}

-- CUDA: C's loads (the prelude is valid CUDA with __device__ added) and round-to-nearest intrinsics,
-- which nvcc/NVRTC never contract into FMAs.
M.dialects.cuda = {
  name = "cuda",
  prelude = (C_PRELUDE:gsub("#include <stdint.h>\n#include <string.h>\n", "")
                      :gsub("static inline", "static __device__ __forceinline__")
                      :gsub("float f;\n  memcpy%(&f, &u, 4%);\n  return f;", "return __uint_as_float(u);")
                      :gsub("{ float f; memcpy%(&f, &u, 4%); return f; }", "{ return __uint_as_float(u); }")) ..
            "/* (float)v, exact for -2^22 <= v < 2^22, without the slow conversion instruction (expr.lua, RANGES). */\n" ..
            "static __device__ __forceinline__ float qmoe_q_i2f(int v) { return __fsub_rn(__int_as_float(0x4B400000 + v), 12582912.0f); }\n" ..
            "/* The 4 bytes at p + t0 (t0 a multiple of 4; p of any alignment) as a little-endian word, from the aligned\n" ..
            " * words around them (the words of p + 0 and p + 4 share one read). Pointer arithmetic, not integer casts,\n" ..
            " * so the compiler still sees shared memory (LDS) where p points there. */\n" ..
            "static __device__ __forceinline__ uint32_t qmoe_q_rd_u32(const uint8_t *p, int t0) {\n" ..
            "  const uint32_t mis = (uint32_t)(uint64_t)p & 3u;\n" ..
            "  const uint32_t *a = (const uint32_t *)(p - mis) + (t0 >> 2);\n" ..
            "  return __funnelshift_r(a[0], a[1], mis * 8u);\n" ..
            "}\n" ..
            "/* The same where p + t0 is a multiple of 4: one read. */\n" ..
            "static __device__ __forceinline__ uint32_t qmoe_q_rd_u32a(const uint8_t *p, int t0) {\n" ..
            "  return *(const uint32_t *)(p + t0);\n" ..
            "}\n" ..
            "/* The same where p + t0 is 2 mod 4: the two aligned words around it and one byte permute. */\n" ..
            "static __device__ __forceinline__ uint32_t qmoe_q_rd_u32m2(const uint8_t *p, int t0) {\n" ..
            "  const uint32_t *a = (const uint32_t *)(p - 2 + t0);\n" ..
            "  return __byte_perm(a[0], a[1], 0x5432);\n" ..
            "}\n" ..
            "/* (float)(byte k of w) - off, exact: the f32 1.5·2^23 + byte (a byte permute) minus 1.5·2^23 + off. */\n" ..
            "static __device__ __forceinline__ float qmoe_q_unpack(uint32_t w, int k, float base) {\n" ..
            "  return __fsub_rn(__uint_as_float(__byte_perm(w, 0x4B400000u, 0x7640u + k)), base);\n" ..
            "}\n",
  packed = true,
  -- PACKED: the word of the 4 bytes at byte OFF + IDX + t0 of the block, and its type
  rd_word = function(off, idx) return string.format("qmoe_q_rd_u32(b + %d + %s, t0)", off, idx) end,
  -- the same where the block starts at a multiple of 4 and the word's byte offset is one (A4 below)
  rd_word_a4 = function(off, idx) return string.format("qmoe_q_rd_u32a(b + %d + %s, t0)", off, idx) end,
  -- ... and where the block starts at 2 mod 4 (so does every such word): two aligned reads and a byte permute
  rd_word_m2 = function(off, idx) return string.format("qmoe_q_rd_u32m2(b + %d + %s, t0)", off, idx) end,
  u32_type = "uint32_t",
  fn_prefix = "static __device__ __forceinline__",
  block_type = "const uint8_t *",
  block_param = "b",
  int_t = "int", float_t = "float",
  load = M.dialects.c.load,
  fmul = function(a, b) return "__fmul_rn(" .. a .. ", " .. b .. ")" end,
  fadd = function(a, b) return "__fadd_rn(" .. a .. ", " .. b .. ")" end,
  fsub = function(a, b) return "__fsub_rn(" .. a .. ", " .. b .. ")" end,
  fdiv = function(a, b) return "__fdiv_rn(" .. a .. ", " .. b .. ")" end,
  to_float = function(x) return "(float)" .. x end,
  i2f_small = function(x) return "qmoe_q_i2f(" .. x .. ")" end,
  to_int = function(x) return "(int)" .. x end,
  float_lit = function(v) return hexfloat(v) .. "f" end,
  truth = function(x) return x end,
  from_bool = function(x) return x end,
  decl_int = "const int", decl_float = "const float",
  table_decl = function(name, ty, n, items)
    return string.format("static __device__ const %s %s[%d] = { %s };", ty, name, n, items)
  end,
}

-- GLSL: the block lives in a uint[] buffer (dialect.buffer, default "qw") at byte offset `base`.
local GLSL_LOADS = {
  u8 = "qmoe_q_u8(%s)", i8 = "((int(qmoe_q_u8(%s)) << 24) >> 24)",
  u16 = "qmoe_q_u16(%s)", i16 = "((int(qmoe_q_u16(%s)) << 16) >> 16)",
  f16 = "unpackHalf2x16(uint(qmoe_q_u16(%s))).x", bf16 = "uintBitsToFloat(uint(qmoe_q_u16(%s)) << 16)",
  f32 = "uintBitsToFloat(uint(qmoe_q_u16(%s)) | (uint(qmoe_q_u16(%s + 2u)) << 16))",
}
function M.glsl_dialect(buffer)
  buffer = buffer or "qw"
  local prelude = string.format([[
// Little-endian loads of bytes and 16-bit words at byte offset o of the uint buffer %s.
int qmoe_q_u8(uint o) { return int((%s[o >> 2] >> ((o & 3u) * 8u)) & 0xFFu); }
int qmoe_q_u16(uint o) { return qmoe_q_u8(o) | (qmoe_q_u8(o + 1u) << 8); }
// PACKED (dialect.packed): the 4 bytes at byte o + t0 as one little-endian word, from the two words around them
// (a GLSL shift by 32 is undefined: an aligned word is returned as it is).
uint qmoe_q_rd_u32(uint o, int t0) {
  o += uint(t0);
  const uint s = (o & 3u) * 8u, w0 = %s[o >> 2];
  return s == 0u ? w0 : (w0 >> s) | (%s[(o >> 2) + 1u] << (32u - s));
}
// (float)(byte k of w) - off, exact: the f32 1.5*2^23 + byte minus BASE = 1.5*2^23 + off.
float qmoe_q_unpack(uint w, int k, float base) {
  return uintBitsToFloat(0x4B400000u | ((w >> uint(8 * k)) & 0xFFu)) - base;
}
]], buffer, buffer, buffer, buffer)
  return {
    name = "glsl",
    prelude = prelude,
    fn_prefix = "",
    block_type = "uint ",
    block_param = "base",
    -- PACKED, where the caller sets dialect.packed (the row shaders' staged rows)
    rd_word = function(off, idx) return string.format("qmoe_q_rd_u32(base + uint(%d + %s), t0)", off, idx) end,
    u32_type = "uint",
    int_t = "int", float_t = "float",
    load = function(ftype, byte_off)
      local o = "base + uint(" .. byte_off .. ")"
      local pat = GLSL_LOADS[ftype]
      if ftype == "f32" then return string.format(pat, o, o) end
      if ftype == "u8" or ftype == "u16" then return string.format(pat, o) end
      return string.format(pat, o)
    end,
    fmul = function(a, b) return "(" .. a .. " * " .. b .. ")" end,
    fadd = function(a, b) return "(" .. a .. " + " .. b .. ")" end,
    fsub = function(a, b) return "(" .. a .. " - " .. b .. ")" end,
    fdiv = function(a, b) return "(" .. a .. " / " .. b .. ")" end,
    to_float = function(x) return "float(" .. x .. ")" end,
    i2f_small = function(x) return "(intBitsToFloat(0x4B400000 + " .. x .. ") - 12582912.0)" end,
    to_int = function(x) return "int(" .. x .. ")" end,
    float_lit = function(v)
      if v == 0 then return (1 / v < 0) and "-0.0" or "0.0" end
      local s = string.format("%.9g", v)
      if not s:find("[%.e]") then s = s .. ".0" end
      return s
    end,
    truth = function(x) return "(" .. x .. " != 0)" end,
    from_bool = function(x) return "int" .. x end,
    -- `precise` keeps each float operation feeding the variable exact: no contraction, no reordering.
    decl_int = "int", decl_float = "precise float",
    table_decl = function(name, ty, n, items) return string.format("const %s %s[%d] = %s[%d](%s);", ty, name, n, ty, n, items) end,
    -- decode_block in GLSL writes into a caller array; GLSL has no pointers.
    no_block_fn = true,
  }
end
M.dialects.glsl = M.glsl_dialect("qw")

local function paren(s) return "(" .. s .. ")" end
local TABLES = {} -- key in emit_node's vars: the table literals met so far ({prefix, decls, by_key})
local RANGES = {} -- key in emit_node's vars: the range_of context of the lets emitted so far (or nil)
-- An int in [-2^22, 2^22) converts to f32 exactly by bits: 0x4B400000 + v is the f32 1.5·2^23 + v (its ulp
-- is 1), and subtracting 1.5·2^23 leaves v. Dialects with D.i2f_small use it there: on GPUs an int -> float
-- conversion runs at a fraction of the FP32 rate, an integer add and a float subtract at full rate.
local I2F_SMALL_LO, I2F_SMALL_HI = -(1 << 22), (1 << 22) - 1
-- Key in emit_node's vars: with a dialect's `group` G > 1, {G, pv = pure let values per element, memo}: a
-- subexpression that reads only i and pure lets and has one value over each aligned run of G elements is
-- emitted over ig = i & ~(G-1) instead of i. A kernel whose lane decodes elements i0 | t (t < G) then shows
-- the compiler the same expression for every t (as `(i0 | t) / 32 < 4` does not), so a sub-block's scales
-- are computed once per run, not once per element. Found by evaluating every element, not by pattern.
local GROUP = {}
local IN_GROUP = {}

local function mentions_i(node)
  if not node then return false end
  if node.k == "name" then return node.name == "i" end
  return mentions_i(node.a) or mentions_i(node.b) or mentions_i(node.c) or mentions_i(node.idx)
end

local function group_const(node, grp)
  local memo = grp.memo[node]
  if memo ~= nil then return memo end
  local ok = true
  for i = 0, grp.be - 1 do
    local i0 = i - i % grp.G
    if i ~= i0 and eval(node, { vals = grp.pv[i] }) ~= eval(node, { vals = grp.pv[i0] }) then ok = false break end
  end
  grp.memo[node] = ok
  return ok
end

-- Emits NODE as text in dialect D. vars: name -> emitted local name.
-- raw_bool: the caller wants a condition; comparisons and logical operators return it unconverted.
local function emit_node(node, D, vars, raw_bool)
  local grp = vars[GROUP]
  if grp and not vars[IN_GROUP] and node.pure and node.k ~= "int" and node.k ~= "float" and mentions_i(node)
     and group_const(node, grp) then
    grp.used = true
    return emit_node(node, D, setmetatable({ i = "ig", [IN_GROUP] = true }, { __index = vars }), raw_bool)
  end
  local function as_float(n)
    local s = emit_node(n, D, vars)
    if n.ty == "int" then
      if n.k == "int" then return D.float_lit(n.v + 0.0) end
      if D.i2f_small and vars[RANGES] then
        local lo, hi = M.range_of(n, vars[RANGES])
        if lo >= I2F_SMALL_LO and hi <= I2F_SMALL_HI then return D.i2f_small(s) end
      end
      return D.to_float(s)
    end
    return s
  end
  local function as_bool(n)
    if (n.k == "bin" and (CMP[n.op] or n.op == "&&" or n.op == "||")) or (n.k == "un" and n.op == "!") then
      return emit_node(n, D, vars, true)
    end
    return D.truth(emit_node(n, D, vars))
  end
  local function logical(text) return raw_bool and text or D.from_bool(text) end
  local k = node.k
  local s
  if k == "int" then s = tostring(node.v)
  elseif k == "float" then s = D.float_lit(node.v)
  elseif k == "name" then s = vars[node.name]
  elseif k == "index" then
    local f = node.bind.field
    local size = M.FIELD_TYPES[f.type].size
    local idx = emit_node(node.idx, D, vars)
    local off
    if node.idx.k == "int" then off = tostring(f.offset + node.idx.v * size)
    elseif size == 1 then off = (f.offset == 0) and idx or (f.offset .. " + " .. idx)
    else off = (f.offset == 0 and "" or (f.offset .. " + ")) .. size .. " * " .. paren(idx) end
    s = D.load(f.type, off)
  elseif k == "table" then
    -- One constant array per distinct table, declared by emit() before the functions (D.table_decl).
    local reg = vars[TABLES]
    local items = {}
    for _, v in ipairs(node.items) do items[#items + 1] = node.fl and D.float_lit(v) or tostring(v) end
    local key = node.ty .. ":" .. table.concat(items, ",")
    local name = reg.by_key[key]
    if not name then
      name = reg.prefix .. "_tab" .. (#reg.decls + 1)
      reg.by_key[key] = name
      reg.decls[#reg.decls + 1] = D.table_decl(name, node.ty == "float" and D.float_t or D.int_t, #items, table.concat(items, ", "))
    end
    s = name .. "[" .. emit_node(node.idx, D, vars) .. "]"
  elseif k == "call" then
    if node.fn == "float" then s = as_float(node.a)
    elseif node.a.ty == "int" then s = emit_node(node.a, D, vars)
    else s = D.to_int(paren(emit_node(node.a, D, vars))) end
  elseif k == "un" then
    if node.op == "!" then
      s = logical("(!" .. as_bool(node.a) .. ")")
    else
      s = "(" .. node.op .. emit_node(node.a, D, vars) .. ")"
    end
  elseif k == "cond" then
    local fl = node.ty == "float"
    local a = fl and as_float(node.a) or emit_node(node.a, D, vars)
    local b = fl and as_float(node.b) or emit_node(node.b, D, vars)
    -- D.select (optional): a dialect that evaluates both arms, e.g. branch-free for GPUs.
    s = D.select and D.select(as_bool(node.c), a, b) or ("(" .. as_bool(node.c) .. " ? " .. a .. " : " .. b .. ")")
  else
    local op = node.op
    local fl = node.a.ty == "float" or node.b.ty == "float"
    if op == "&&" or op == "||" then
      s = logical("(" .. as_bool(node.a) .. " " .. op .. " " .. as_bool(node.b) .. ")")
    elseif CMP[op] then
      local a = fl and as_float(node.a) or emit_node(node.a, D, vars)
      local b = fl and as_float(node.b) or emit_node(node.b, D, vars)
      s = logical("(" .. a .. " " .. op .. " " .. b .. ")")
    elseif fl then
      local a, b = as_float(node.a), as_float(node.b)
      if op == "*" then s = D.fmul(a, b) elseif op == "+" then s = D.fadd(a, b)
      elseif op == "-" then s = D.fsub(a, b) else s = D.fdiv(a, b) end
    else
      s = "(" .. emit_node(node.a, D, vars) .. " " .. op .. " " .. emit_node(node.b, D, vars) .. ")"
    end
  end
  return s
end

-- ---------------------------------------------------------------------------------------------------
-- AFFINE runs: over one run of G elements (GROUP), a decode value that is A·V + B with A and B constant over
-- the run and V the one part that varies (a varying int subexpression, converted once, or a varying float
-- leaf) lets a dot product over the run be A·Σ V·x + B·Σ x: per element one conversion and one FMA instead of
-- the whole value; Σ x is shared by every row that reads the same x. Rounding differs from decoding each
-- value (A·V − B is not rounded per element), so only f32-accumulator kernels use it (their contract bound is
-- an NMSE, not exactness); f64 kernels keep the exact per-element decode.

local ONE = { k = "float", v = 1.0, ty = "float", pure = true }
local function fbin(op, a, b) return { k = "bin", op = op, a = a, b = b, ty = "float" } end
local function fneg(a) return { k = "un", op = "-", a = a, ty = a.ty } end
local function fmul(a, b) if a == nil then return b end if b == nil then return a end return fbin("*", a, b) end

-- affine_of(value, grp, letast) -> {A = node|nil (1), V = node, B = node|nil (0)} | nil when the value is
-- not of that form (two varying parts multiplied, a varying condition, ...). grp: the GROUP context.
-- make_rc(grp, letast) -> rc(node): whether NODE (which may read fields) has one value over every aligned run
-- of grp.G elements: its value at i equals its value at the run's start.
local function make_rc(grp, letast)
  local rcm = {}
  local function rc(n)
    if rcm[n] ~= nil then return rcm[n] end
    local r
    if n.k == "int" or n.k == "float" then r = true
    elseif n.pure then r = group_const(n, grp)
    elseif n.k == "name" then r = n.bind.kind == "field" or (n.bind.kind == "let" and rc(letast[n.name]))
    elseif n.k == "index" or n.k == "table" then r = rc(n.idx)
    elseif n.k == "call" or n.k == "un" then r = rc(n.a)
    elseif n.k == "bin" then r = rc(n.a) and rc(n.b)
    elseif n.k == "cond" then r = rc(n.c) and rc(n.a) and rc(n.b)
    else r = false end
    rcm[n] = r
    return r
  end
  return rc
end

local function affine_of(value, grp, letast)
  local rc = make_rc(grp, letast)
  local function go(n)
    if rc(n) then return { C = n } end
    if n.ty == "int" then return { V = n } end -- the varying int part, converted to float once
    local k = n.k
    if k == "name" and n.bind.kind == "let" then return go(letast[n.name]) end
    if k == "call" then return go(n.a) end
    if k == "un" and n.op == "-" then
      local r = go(n.a)
      if not r then return nil end
      if r.C then return { C = n } end
      return { A = fneg(r.A or ONE), V = r.V, B = r.B and fneg(r.B) }
    end
    if k == "bin" and (n.op == "*" or n.op == "+" or n.op == "-" or n.op == "/") then
      local ra, rb = go(n.a), go(n.b)
      if not ra or not rb then return nil end
      if n.op == "*" then
        if ra.C and rb.V then return { A = fmul(ra.C, rb.A), V = rb.V, B = rb.B and fmul(ra.C, rb.B) } end
        if rb.C and ra.V then return { A = fmul(ra.A, rb.C), V = ra.V, B = ra.B and fmul(ra.B, rb.C) } end
        return nil
      elseif n.op == "/" then
        if rb.C and ra.V then return { A = fbin("/", ra.A or ONE, rb.C), V = ra.V, B = ra.B and fbin("/", ra.B, rb.C) } end
        return nil
      else
        if ra.V and rb.C then return { A = ra.A, V = ra.V, B = ra.B and fbin(n.op, ra.B, rb.C) or (n.op == "-" and fneg(rb.C) or rb.C) } end
        if ra.C and rb.V then
          return { A = n.op == "-" and fneg(rb.A or ONE) or rb.A, V = rb.V, B = rb.B and fbin(n.op, ra.C, rb.B) or ra.C }
        end
        return nil
      end
    end
    if k == "cond" then return nil end
    return { V = n } -- a varying float leaf (a load)
  end
  local r = go(value)
  if not r or r.C then return nil end
  return r
end

-- PACKED runs (dialects with D.packed): the varying int part V of an affine run, evaluated for 4 consecutive
-- elements at once, one per byte of a 32-bit word (SIMD within a register), where V is built only of:
--   * a u8 field read at an index that steps by 1 with i over the run (4 bytes read as one word),
--   * >> by a run-constant amount, & with a constant that clears every bit a shift brought in from the next
--     byte, | of two such words, << by a run-constant amount that keeps every byte below 256,
--   * at the top, minus a constant (or an i8 read: the u8 bits plus 128, minus 128): the word's offset.
-- Each byte is then the exact integer V + off, so (float)V is the same f32 bit for bit either way: the kernel
-- turns a byte into 1.5·2^23 + byte by a byte permute and subtracts 1.5·2^23 + off. One word read and a few
-- word operations replace four byte reads and their shifts and masks. nil when V has any other form.
-- A4 (D.rd_word_a4 given): the words as aligned reads, where every word's byte offset in the block is a
-- multiple of 4 at every run start (a caller whose block starts at a multiple of 4 may use them); nil otherwise.
-- A4 = "m2": the same words where the block starts at 2 mod 4 (D.rd_word_m2).
local function packed_of(V, grp, letast, D, vars, a4)
  local function word(f, idx) -- the word read of field F at index IDX (+ t0)
    if a4 then
      for i0 = 0, grp.be - 1, grp.G do
        if (f.offset + eval(idx, { vals = grp.pv[i0] })) % 4 ~= 0 then return nil end
      end
      return (a4 == "m2" and D.rd_word_m2 or D.rd_word_a4)(f.offset, paren(emit_node(idx, D, vars)))
    end
    return D.rd_word(f.offset, paren(emit_node(idx, D, vars)))
  end
  local function rc(n) -- run-constant (its value at the run's start serves every element)
    if n.k == "int" then return true end
    if n.pure then return group_const(n, grp) end
    return false
  end
  local function steps_by_one(idx) -- idx(i) - i is constant over each run
    if not idx.pure then return false end
    for i = 0, grp.be - 1 do
      local i0 = i - i % grp.G
      if eval(idx, { vals = grp.pv[i] }) - eval(idx, { vals = grp.pv[i0] }) ~= i - i0 then return false end
    end
    return true
  end
  local function scalar(n) -- a run-constant int: text and range
    if not rc(n) then return nil end
    local lo, hi = M.range_of(n, vars[RANGES])
    return emit_node(n, D, vars), lo, hi
  end
  -- go(n) -> {t = word text, g = top bits of each byte that may hold another byte's bits, hi = byte max}
  local go
  go = function(n)
    local k = n.k
    if k == "name" and n.bind.kind == "let" then return go(letast[n.name]) end
    if k == "call" and n.a.ty == "int" then return go(n.a) end
    if k == "index" and n.bind.field.type == "u8" and steps_by_one(n.idx) then
      local t = word(n.bind.field, n.idx)
      if not t then return nil end
      return { t = t, g = 0, hi = 255 }
    end
    if k ~= "bin" then return nil end
    local op = n.op
    if op == ">>" or op == "<<" then
      local a = go(n.a)
      local st, lo, hi = scalar(n.b)
      if not a or not st or lo < 0 or hi > 7 then return nil end
      if op == ">>" then return { t = "(" .. a.t .. " >> " .. paren(st) .. ")", g = a.g + hi, hi = a.hi >> lo } end
      if a.g > 0 or (a.hi << hi) > 255 then return nil end
      return { t = "(" .. a.t .. " << " .. paren(st) .. ")", g = 0, hi = a.hi << hi }
    end
    if op == "&" then
      local a, m = go(n.a), n.b
      if not a then a, m = go(n.b), n.a end
      if not a or m.k ~= "int" or m.v < 0 or m.v > 255 or m.v >= (1 << (8 - a.g)) then return nil end
      return { t = string.format("(%s & 0x%08xu)", a.t, m.v * 0x01010101), g = 0, hi = math.min(a.hi, m.v) }
    end
    if op == "|" then
      local a, b = go(n.a), go(n.b)
      if not a or not b or a.g > 0 or b.g > 0 then return nil end
      return { t = "(" .. a.t .. " | " .. b.t .. ")", g = 0, hi = bits_cover(math.max(a.hi, b.hi)) }
    end
    return nil
  end
  local root, off = V, 0
  while root.k == "name" and root.bind.kind == "let" do root = letast[root.name] end
  if root.k == "bin" and root.op == "-" and root.b.k == "int" and root.b.v >= 0 and root.b.v <= 255 then
    root, off = root.a, root.b.v
  end
  local w
  if root.k == "index" and root.bind.field.type == "i8" and off == 0 and steps_by_one(root.idx) then
    local t = word(root.bind.field, root.idx)
    w = t and { t = "(" .. t .. " ^ 0x80808080u)", g = 0, hi = 255 }
    off = 128
  else
    w = go(root)
  end
  if not w or w.g > 0 or w.hi > 255 then return nil end
  return { t = w.t, off = off }
end

-- Checked program of a contract (raises with the first error when invalid).
function M.compile(q)
  local errs = {}
  local prog = compile(q, errs)
  if not prog then
    local e = errs[1]
    error(string.format("%s: %s%s: %s", tostring(q.__file or q.name), e.path, e.col and (":" .. e.col) or "", e.msg), 0)
  end
  return prog
end

-- emit(q, dialect [, prefix]) -> text of `float <prefix>_decode(<block>, int i)` and, unless the dialect
-- sets no_block_fn, `void <prefix>_decode_block(<block>, float *y)`. prefix defaults to "qmoe_<name>".
-- The dialect's prelude (helpers) is NOT included: emit it once per file with expr.prelude(dialect).
function M.emit(q, D, prefix)
  if type(D) == "string" then D = assert(M.dialects[D], "unknown dialect " .. D) end
  local prog = M.compile(q)
  prefix = prefix or ("qmoe_" .. q.name)
  local vars = { i = "i", [TABLES] = { prefix = prefix, decls = {}, by_key = {} },
                 [RANGES] = { vals = {}, ranges = { i = { 0, q.block_elements - 1 } } } }
  local lines = {}
  local head = (D.fn_prefix ~= "" and (D.fn_prefix .. " ") or "")
  lines[#lines + 1] = string.format("%sfloat %s_decode(%s%s, int i) {", head, prefix, D.block_type, D.block_param)
  -- Scalar fields used anywhere become locals read once.
  local used = {}
  local function scan(n)
    if not n then return end
    if n.k == "name" and n.bind and n.bind.kind == "field" then used[n.name] = n.bind.field end
    scan(n.a) scan(n.b) scan(n.c) scan(n.idx)
  end
  for _, l in ipairs(prog.lets) do scan(l.ast) end
  scan(prog.value)
  for _, f in ipairs(fields_of(q)) do
    if used[f.name] then
      local ty = M.FIELD_TYPES[f.type].ty
      local decl = ty == "int" and D.decl_int or D.decl_float
      lines[#lines + 1] = string.format("  %s f_%s = %s;", decl, f.name, D.load(f.type, tostring(f.offset)))
      vars[f.name] = "f_" .. f.name
    end
  end
  local G, be = D.group, q.block_elements
  if G and G > 1 and (G & (G - 1)) == 0 and be % G == 0 then
    local pv = {}
    for i = 0, be - 1 do
      local vals = { i = i }
      for _, l in ipairs(prog.lets) do
        if l.ast.pure then vals[l.name] = eval(l.ast, { vals = vals }) end
      end
      pv[i] = vals
    end
    vars[GROUP] = { G = G, be = be, pv = pv, memo = {} }
  end
  for _, l in ipairs(prog.lets) do
    local decl = l.ast.ty == "int" and D.decl_int or D.decl_float
    lines[#lines + 1] = string.format("  %s v_%s = %s;", decl, l.name, emit_node(l.ast, D, vars))
    vars[l.name] = "v_" .. l.name
    if l.ast.ty == "int" then vars[RANGES].ranges[l.name] = { M.range_of(l.ast, vars[RANGES]) } end
  end
  local body = { table.unpack(lines, 2) } -- the fields and lets, for the affine parts below
  local v = emit_node(prog.value, D, vars)
  lines[#lines + 1] = string.format("  %s r = %s;", D.decl_float, v)
  lines[#lines + 1] = "  return r;"
  lines[#lines + 1] = "}"
  local info = {}
  if vars[GROUP] and D.affine then
    local letast = {}
    for _, l in ipairs(prog.lets) do letast[l.name] = l.ast end
    local af = affine_of(prog.value, vars[GROUP], letast)
    if af and (af.A or af.B) then
      -- <prefix>_run_a(b, ig) / _run_b(b, ig): A and B of the run starting at ig; <prefix>_run_v(b, ig, i): V.
      -- Each repeats the fields and lets (the compiler drops what its result does not use).
      info.affine = { a = af.A ~= nil, b = af.B ~= nil }
      local function fn(name, params, pre, node)
        lines[#lines + 1] = string.format("%sfloat %s_%s(%s%s, %s) {", head, prefix, name, D.block_type, D.block_param, params)
        if pre then lines[#lines + 1] = pre end
        for _, b in ipairs(body) do lines[#lines + 1] = b end
        local text = node.ty == "int" and emit_node({ k = "call", fn = "float", a = node, ty = "float" }, D, vars)
                     or emit_node(node, D, vars)
        lines[#lines + 1] = string.format("  return %s;", text)
        lines[#lines + 1] = "}"
      end
      -- SPAN: the longest aligned span (a power of two, G..block_elements) over which A and B keep one value
      -- (q4_k: a sub-block of 32; q6_k: 16). A kernel may decode them once per span for all of its runs
      -- (<PREFIX>_RUN_SPAN); found by evaluation like GROUP, not by pattern.
      local span = G
      while span * 2 <= be and be % (span * 2) == 0 do
        local rc2 = make_rc({ G = span * 2, be = be, pv = vars[GROUP].pv, memo = {} }, letast)
        if (af.A and not rc2(af.A)) or (af.B and not rc2(af.B)) then break end
        span = span * 2
      end
      info.affine.span = span
      lines[#lines + 1] = string.format("#define %s_RUN_SPAN %d", prefix:upper(), span)
      local pre = "  " .. D.decl_int .. " i = ig;"
      if af.A then fn("run_a", "int ig", pre, af.A) end
      if af.B then fn("run_b", "int ig", pre, af.B) end
      fn("run_v", "int ig, int i", nil, af.V)
      -- <prefix>_run_w(b, ig, t0): V + off of elements ig | t0 .. ig | (t0 + 3) in the bytes of one word
      -- (PACKED above); <PREFIX>_RUN_W_OFF: off
      if D.packed and af.V.ty == "int" then
        local function word_fn(name, w) -- <prefix>_<name>(b, ig, t0) returning the word text W
          lines[#lines + 1] = string.format("%s%s %s_%s(%s%s, int ig, int t0) {", head, D.u32_type, prefix, name, D.block_type, D.block_param)
          lines[#lines + 1] = pre
          for _, b in ipairs(body) do lines[#lines + 1] = b end
          lines[#lines + 1] = "  return " .. w.t .. ";"
          lines[#lines + 1] = "}"
        end
        local pk = packed_of(af.V, vars[GROUP], letast, D, vars)
        if pk then
          info.affine.packed = true
          lines[#lines + 1] = string.format("#define %s_RUN_W_OFF %d", prefix:upper(), pk.off)
          word_fn("run_w", pk)
          -- <prefix>_run_w4(b, ig, t0): the same by aligned word reads, for a block at a multiple of 4
          local pk4 = D.rd_word_a4 and packed_of(af.V, vars[GROUP], letast, D, vars, true)
          if pk4 then
            info.affine.packed_a4 = true
            word_fn("run_w4", pk4)
            -- <prefix>_run_w2(b, ig, t0): the same for a block at 2 mod 4 (blocks of 4k + 2 bytes alternate)
            local pk2 = D.rd_word_m2 and q.block_bytes % 4 == 2 and packed_of(af.V, vars[GROUP], letast, D, vars, "m2")
            if pk2 then
              info.affine.packed_m2 = true
              word_fn("run_w2", pk2)
            end
          end
        end
      end
    end
  end
  if vars[GROUP] then
    -- With runs: <prefix>_decode_run(b, ig, i), ig = i & ~(G-1) passed by a caller that can name it without
    -- i (a kernel's lane base: the compiler folds `(ig | t) / 32 < 4` into `(ig | t) < 128`, a different
    -- test per t, and would compute each run's scales per element again); <prefix>_decode(b, i) wraps it.
    lines[1] = string.format("%sfloat %s_decode_run(%s%s, int ig, int i) {", head, prefix, D.block_type, D.block_param)
    lines[#lines + 1] = string.format("%sfloat %s_decode(%s%s, int i) { return %s_decode_run(%s, i & ~%d, i); }",
                                      head, prefix, D.block_type, D.block_param, prefix, D.block_param, G - 1)
  end
  if not D.no_block_fn then
    lines[#lines + 1] = ""
    -- Decoding into a local array first: its stores cannot alias the block, so the compiler may hoist
    -- the per-block loads (scales) out of the loop.
    lines[#lines + 1] = string.format("%svoid %s_decode_block(%s%s, float *y) {", head, prefix, D.block_type, D.block_param)
    lines[#lines + 1] = string.format("  float t[%d];", q.block_elements)
    lines[#lines + 1] = string.format("  for (int i = 0; i < %d; i++) t[i] = %s_decode(%s, i);", q.block_elements, prefix, D.block_param)
    lines[#lines + 1] = string.format("  for (int i = 0; i < %d; i++) y[i] = t[i];", q.block_elements)
    lines[#lines + 1] = "}"
  end
  local decls = vars[TABLES].decls
  if #decls > 0 then return table.concat(decls, "\n") .. "\n" .. table.concat(lines, "\n") .. "\n", info end
  return table.concat(lines, "\n") .. "\n", info
end

-- ---------------------------------------------------------------------------------------------------
-- Recipe rules (contracts/recipes): `when` conditions over the layer index i and the layer count n.

local RULE_NAMES = { "i", "n" }
local RULE_N_MAX = 256 -- conditions are evaluated for every n in 1..RULE_N_MAX and i in 0..n-1

-- compile_rule(src) -> ast | nil, msg, col: a checked int condition over i and n.
function M.compile_rule(src)
  local ast, msg, col = M.parse(src)
  if not ast then return nil, msg, col end
  local env = {}
  for _, nm in ipairs(RULE_NAMES) do env[nm] = { kind = "let", ty = "int", pure = true } end
  local ok, err = pcall(typecheck, ast, env)
  if not ok then
    if getmetatable(err) ~= CheckError then error(err, 0) end
    local hint = err.msg:find("^unknown name") and "; a condition knows i (the layer) and n (the layer count)" or ""
    return nil, err.msg .. hint, err.col
  end
  if ast.ty ~= "int" then return nil, "a condition must be int (a comparison), not float", 1 end
  for n = 1, RULE_N_MAX do
    for i = 0, n - 1 do
      local eok, e = pcall(eval, ast, { vals = { i = i, n = n }, both_arms = true })
      if not eok then
        if getmetatable(e) ~= EvalError then error(e, 0) end
        return nil, string.format("%s at i = %d, n = %d", e.msg, i, n), e.col
      end
    end
  end
  return ast
end

-- eval_rule(ast, i, n) -> int: the condition's value (the reference the generated C is tested against).
function M.eval_rule(ast, i, n) return eval(ast, { vals = { i = i, n = n } }) end

-- emit_rule(ast, dialect, vars) -> text of the condition as an expression of D (vars: name -> C name).
function M.emit_rule(ast, D, vars)
  if type(D) == "string" then D = assert(M.dialects[D], "unknown dialect " .. D) end
  local v = { [TABLES] = { prefix = "qmoe_rule", decls = {}, by_key = {} } }
  for k, x in pairs(vars) do v[k] = x end
  local text = emit_node(ast, D, v)
  if #v[TABLES].decls > 0 then error("recipe conditions cannot use table literals", 0) end
  return text
end

-- check_recipe(r) -> {{path, col, msg}...}: every rule's `when` parses, checks and evaluates without error.
function M.check_recipe(r)
  local errs = {}
  for k, rule in ipairs(type(r.rules) == "table" and r.rules or {}) do
    if type(rule) == "table" and rule.when ~= nil then
      local ast, msg, col = M.compile_rule(rule.when)
      if not ast then errs[#errs + 1] = { path = "rules[" .. k .. "].when", col = col, msg = msg } end
    end
  end
  return errs
end

function M.prelude(D)
  if type(D) == "string" then D = assert(M.dialects[D], "unknown dialect " .. D) end
  return D.prelude
end

return M
