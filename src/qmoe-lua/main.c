/* qmoe-lua: the build's generator host — Lua 5.4 with the embedded codegen modules and a YAML binding.
 * Usage: qmoe-lua SCRIPT.lua [ARGS...] (the script sees its arguments in `arg` and `...`). */
#include <stdio.h>
#include <string.h>
#include <lua.h>
#include "luaenv.h"
#include "pv.h"

int main(int argc, char **argv) {
  if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
    fprintf(argc < 2 ? stderr : stdout,
            "usage: qmoe-lua SCRIPT.lua [ARGS...]\n"
            "Runs a qmoe generator script with the codegen/lib modules and `yaml` (yaml.load, yaml.pos).\n");
    return argc < 2 ? 2 : 0;
  }
  lua_State *L = luaenv_new();
  pv_register_lua(L); /* require("pv"): generators validate contracts with the same checks as `pv validate` */
  int rc = luaenv_dofile(L, argv[1], argc - 2, argv + 2);
  lua_close(L);
  return rc == 0 ? 0 : 1;
}
