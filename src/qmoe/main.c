/* main.c: the `qmoe` command: dispatches `qmoe SUBCOMMAND ARGS...` through the table in cmd.h and
 * answers `qmoe --help` and `qmoe SUBCOMMAND --help`. */
#include <stdio.h>
#include <string.h>
#include "cmd.h"

#define QMOE_TABLE_ENTRY(name) &cmd_##name,
static const qmoe_command *const commands[] = { QMOE_COMMANDS(QMOE_TABLE_ENTRY) };
#undef QMOE_TABLE_ENTRY
#define N_COMMANDS ((int)(sizeof commands / sizeof commands[0]))

static void print_help(FILE *fp) {
  fprintf(fp, "usage: qmoe COMMAND [ARGS...]\n"
              "qmoe reads, inspects, decodes and quantizes GGUF files with qmoe's contract-generated codecs.\n\n"
              "commands:\n");
  for (int i = 0; i < N_COMMANDS; i++) fprintf(fp, "  %-10s %s\n", commands[i]->name, commands[i]->summary);
  fprintf(fp, "\n`qmoe COMMAND --help` describes a command.\n");
}

int main(int argc, char **argv) {
  if (argc < 2) {
    print_help(stderr);
    return 2;
  }
  if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
    if (argc >= 3 && strcmp(argv[1], "help") == 0) {
      for (int i = 0; i < N_COMMANDS; i++)
        if (!strcmp(argv[2], commands[i]->name)) return fputs(commands[i]->usage, stdout), 0;
    }
    print_help(stdout);
    return 0;
  }
  for (int i = 0; i < N_COMMANDS; i++) {
    const qmoe_command *c = commands[i];
    if (strcmp(argv[1], c->name)) continue;
    for (int a = 2; a < argc && strcmp(argv[a], "--"); a++) {
      if (!strcmp(argv[a], "--help") || !strcmp(argv[a], "-h")) {
        fputs(c->usage, stdout);
        return 0;
      }
    }
    return c->run(argc - 1, argv + 1);
  }
  fprintf(stderr, "qmoe: unknown command '%s'\n\n", argv[1]);
  print_help(stderr);
  return 2;
}
