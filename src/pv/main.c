/* pv: the contract validator's command line. `pv validate [PATH...]` checks quant, stage and model
 * contracts (docs/contracts.md); exit status 0 valid, 1 invalid, 2 usage or I/O error. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "pv.h"

#define PV_VERSION "0.1.0"

static const char USAGE[] =
  "usage: pv validate [--format text|json] [--refs DIR | --no-refs] [PATH...]\n"
  "       pv schema            (the contract key tables, as Markdown)\n"
  "       pv --version | --help\n"
  "Validates contracts: each PATH is a contract file or a directory searched for *.yaml / *.yml\n"
  "(default: contracts/). The kind comes from the quant/, stages/, models/ or recipes/ directory a file is in.\n"
  "  --format FMT   text (default): file:line:col: error[CODE]: message lines and a summary;\n"
  "                 json: one object with the diagnostics and the counts\n"
  "  --refs DIR     resolve references against the contracts under DIR (its quant/, stages/, models/, recipes/)\n"
  "                 instead of the contract root of each PATH; those files are not reported on\n"
  "  --no-refs      resolve references among the given files only\n"
  "Exit status: 0 valid, 1 invalid, 2 usage or I/O error. See docs/contracts.md.\n";

static int usage_error(const char *fmt, const char *arg) {
  fprintf(stderr, "pv: ");
  fprintf(stderr, fmt, arg);
  fprintf(stderr, "\n%s", USAGE);
  return 2;
}

static int cmd_validate(int argc, char **argv) {
  const char **paths = calloc((size_t)argc + 1, sizeof *paths);
  if (!paths) return 2;
  size_t np = 0;
  int json = 0, only_paths = 0;
  pv_options opt = { 0 };
  for (int i = 0; i < argc; i++) {
    const char *a = argv[i];
    if (only_paths || a[0] != '-' || !strcmp(a, "-")) {
      paths[np++] = a;
    } else if (!strcmp(a, "--")) {
      only_paths = 1;
    } else if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
      fputs(USAGE, stdout);
      free(paths);
      return 0;
    } else if (!strcmp(a, "--format") || !strncmp(a, "--format=", 9)) {
      const char *v = a[8] == '=' ? a + 9 : (i + 1 < argc ? argv[++i] : NULL);
      if (!v) { free(paths); return usage_error("--format needs a value (text or json)%s", ""); }
      if (!strcmp(v, "json")) json = 1;
      else if (!strcmp(v, "text")) json = 0;
      else { free(paths); return usage_error("unknown format '%s' (use text or json)", v); }
    } else if (!strcmp(a, "--refs") || !strncmp(a, "--refs=", 7)) {
      const char *v = a[6] == '=' ? a + 7 : (i + 1 < argc ? argv[++i] : NULL);
      if (!v || !*v) { free(paths); return usage_error("--refs needs a directory%s", ""); }
      opt.refs = v;
    } else if (!strcmp(a, "--no-refs")) {
      opt.no_refs = 1;
    } else {
      free(paths);
      return usage_error("unknown option '%s'", a);
    }
  }
  if (opt.refs && opt.no_refs) {
    free(paths);
    return usage_error("--refs and --no-refs exclude each other%s", "");
  }
  if (np == 0) paths[np++] = "contracts";
  pv_result res = { 0 };
  int rc = pv_validate(paths, np, &opt, &res);
  if (json) pv_print_json(&res, stdout);
  else pv_print_text(&res, stdout);
  pv_result_free(&res);
  free(paths);
  if (fflush(stdout) != 0) return 2;
  return rc;
}

int main(int argc, char **argv) {
  if (argc < 2) return usage_error("missing command%s", "");
  const char *cmd = argv[1];
  if (!strcmp(cmd, "--version") || !strcmp(cmd, "version")) {
    printf("pv (qmoe) %s\n", PV_VERSION);
    return 0;
  }
  if (!strcmp(cmd, "--help") || !strcmp(cmd, "-h") || !strcmp(cmd, "help")) {
    fputs(USAGE, stdout);
    return 0;
  }
  if (!strcmp(cmd, "validate")) return cmd_validate(argc - 2, argv + 2);
  if (!strcmp(cmd, "schema")) {
    if (argc > 2) return usage_error("schema takes no arguments (got '%s')", argv[2]);
    pv_print_schema(stdout);
    return fflush(stdout) == 0 ? 0 : 2;
  }
  return usage_error(cmd[0] == '-' ? "unknown option '%s'" : "unknown command '%s'", cmd);
}
