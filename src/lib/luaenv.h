/* luaenv.h: the Lua 5.4 state shared by pv, the generator host and qmoe-gen: standard libraries, the
 * codegen/lib modules embedded at configure time (require "expr" etc.), and the `yaml` module. */
#ifndef QMOE_LUAENV_H
#define QMOE_LUAENV_H
#include <lua.h>
#include "yaml_tree.h"

lua_State *luaenv_new(void);
/* Pushes the Lua value of a YAML node: mappings and sequences become tables, plain scalars that read
 * as integers, floats, true/false or null become those values, everything else a string. Positions
 * are recorded for yaml.pos(). */
void luaenv_push_node(lua_State *L, const qy_node *n);
/* Runs a Lua chunk from the embedded modules or a file; on error prints the traceback and returns -1. */
int luaenv_dofile(lua_State *L, const char *path, int argc, char **argv);

#endif
