# check_expr.sh: the decode expression language (src/lib/lua/expr.lua) — parser, checks, interpreter, emitters.
# qmoe-test: normal-only (pure Lua; the host is always build/qmoe-lua)
exec build/qmoe-lua tests/quant/expr_cases.lua
