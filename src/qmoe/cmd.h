/* cmd.h: the `qmoe` command's subcommand table; the helpers the subcommands share are in cli.h. */
#ifndef QMOE_CMD_H
#define QMOE_CMD_H
#include "cli.h"

/* The subcommands, in `qmoe --help` order. To add one, write src/qmoe/cmd_NAME.c defining
 * `const qmoe_command cmd_NAME = { "NAME", ... };` and add X(NAME) to this list. */
#define QMOE_COMMANDS(X) \
  X(inspect) X(dump) X(extract) X(quantize) X(tokenize) X(detokenize) X(run) X(trace) X(bench) X(make_model) X(diff) X(convert)

#define QMOE_DECLARE_COMMAND(name) extern const qmoe_command cmd_##name;
QMOE_COMMANDS(QMOE_DECLARE_COMMAND)
#undef QMOE_DECLARE_COMMAND

#endif
