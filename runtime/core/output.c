/* output.c: the one way qmoe writes a user's file: refuses an output that is one of the inputs, checks the
 * target before the work, writes a temp file beside it (O_EXCL) and renames it into place; cleans up on signals. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>
#include "qmoe.h"

enum { OUT_BUF = 1 << 18, MAX_PENDING = 32 };

struct qmoe_out {
  int fd;
  int direct;    /* stdout or a device/FIFO: written in place, never renamed or removed */
  int is_stdout;
  int failed;    /* a write failed: only abort is allowed */
  int slot;      /* index in the signal-cleanup table, -1 if none */
  int created;   /* the temp file exists and is ours to remove */
  char *path;    /* the target as given (messages) */
  char *target;  /* the path renamed over (symlinks resolved) */
  char *tmp;     /* the temp file (NULL when direct) */
  size_t n;
  unsigned char *buf;
};

/* ---- signal cleanup: temp paths removed by the handler, which only calls async-signal-safe functions ---- */
static char pending_path[MAX_PENDING][PATH_MAX];
static volatile sig_atomic_t pending_used[MAX_PENDING];
static const int cleanup_signals[] = { SIGINT, SIGTERM, SIGHUP };
static struct sigaction old_actions[3];
static volatile sig_atomic_t handlers_installed;

static void on_signal(int sig) {
  for (int i = 0; i < MAX_PENDING; i++)
    if (pending_used[i]) unlink(pending_path[i]);
  for (int i = 0; i < 3; i++) {
    if (cleanup_signals[i] == sig) sigaction(sig, &old_actions[i], NULL);
  }
  /* The previous disposition (normally the default: terminate) takes the signal again. */
  raise(sig);
}

static void install_handlers(void) {
  if (handlers_installed) return;
  handlers_installed = 1;
  for (int i = 0; i < 3; i++) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    for (int k = 0; k < 3; k++) sigaddset(&sa.sa_mask, cleanup_signals[k]);
    if (sigaction(cleanup_signals[i], NULL, &old_actions[i]) != 0) continue;
    if (old_actions[i].sa_handler == SIG_IGN) continue; /* nohup: keep ignoring */
    sigaction(cleanup_signals[i], &sa, NULL);
  }
  /* Past RLIMIT_FSIZE a write fails with EFBIG (and is cleaned up) instead of killing the process. */
  struct sigaction xf;
  if (sigaction(SIGXFSZ, NULL, &xf) == 0 && xf.sa_handler == SIG_DFL) {
    xf.sa_handler = SIG_IGN;
    sigaction(SIGXFSZ, &xf, NULL);
  }
}

static int pending_add(const char *path) {
  if (strlen(path) >= PATH_MAX) return -1;
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_BLOCK, &all, &old);
  int slot = -1;
  for (int i = 0; i < MAX_PENDING && slot < 0; i++) {
    if (!pending_used[i]) {
      memcpy(pending_path[i], path, strlen(path) + 1);
      pending_used[i] = 1;
      slot = i;
    }
  }
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  return slot;
}

static void pending_remove(int slot) {
  if (slot < 0) return;
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_BLOCK, &all, &old);
  pending_used[slot] = 0;
  pthread_sigmask(SIG_SETMASK, &old, NULL);
}

/* ---- helpers ---- */
static char *dup_str(const char *s) {
  size_t n = strlen(s) + 1;
  char *d = malloc(n);
  if (d) memcpy(d, s, n);
  return d;
}

/* The directory part of path ("." when it has none). */
static char *dir_of(const char *path) {
  const char *slash = strrchr(path, '/');
  if (!slash) return dup_str(".");
  if (slash == path) return dup_str("/");
  size_t n = (size_t)(slash - path);
  char *d = malloc(n + 1);
  if (!d) return NULL;
  memcpy(d, path, n);
  d[n] = 0;
  return d;
}

static void free_out(qmoe_out *o) {
  if (!o) return;
  free(o->path);
  free(o->target);
  free(o->tmp);
  free(o->buf);
  free(o);
}

/* Refuses st when it is the same file as one of the inputs. */
static int check_inputs(const char *path, const struct stat *st, const char *const *inputs, size_t n_inputs) {
  for (size_t i = 0; i < n_inputs; i++) {
    struct stat is;
    if (!inputs[i] || stat(inputs[i], &is) != 0) continue;
    if (is.st_dev == st->st_dev && is.st_ino == st->st_ino) {
      qmoe_set_error("%s: the output is the input file %s%s; writing it would destroy the input (choose another "
                     "output path)", path, inputs[i], strcmp(path, inputs[i]) ? " (the same file through a link)" : "");
      return QMOE_EINVAL;
    }
  }
  return 0;
}

static int oom(const char *path) {
  qmoe_set_error("%s: out of memory", path);
  return QMOE_EIO;
}

int qmoe_out_open(const char *path, const char *const *inputs, size_t n_inputs, uint64_t size_hint, qmoe_out **out) {
  *out = NULL;
  if (!path || !path[0]) {
    qmoe_set_error("empty output path");
    return QMOE_EINVAL;
  }
  qmoe_out *o = calloc(1, sizeof *o);
  if (!o) return oom(path);
  o->slot = -1;
  o->fd = -1;
  o->path = dup_str(path);
  o->buf = malloc(OUT_BUF);
  if (!o->path || !o->buf) {
    free_out(o);
    return oom(path);
  }
  struct stat st;
  if (!strcmp(path, "-")) {
    /* stdout redirected to an input (`> in.gguf`) was truncated by the shell already; still refuse it. */
    if (fstat(1, &st) == 0 && S_ISREG(st.st_mode)) {
      int rc = check_inputs("standard output", &st, inputs, n_inputs);
      if (rc) {
        free_out(o);
        return rc;
      }
    }
    o->fd = 1;
    o->direct = o->is_stdout = 1;
    *out = o;
    return 0;
  }
  struct stat lst;
  int exists = stat(path, &st) == 0;
  if (!exists && errno != ENOENT) {
    qmoe_set_error("%s: cannot use as the output: %s", path, strerror(errno));
    free_out(o);
    return QMOE_EIO;
  }
  if (!exists && lstat(path, &lst) == 0) {
    qmoe_set_error("%s: is a symbolic link to nothing (dangling); refusing to replace it", path);
    free_out(o);
    return QMOE_EINVAL;
  }
  if (exists) {
    int rc = check_inputs(path, &st, inputs, n_inputs);
    if (rc) {
      free_out(o);
      return rc;
    }
    if (S_ISDIR(st.st_mode)) {
      qmoe_set_error("%s: is a directory; give a file path for the output", path);
      free_out(o);
      return QMOE_EINVAL;
    }
    if (!S_ISREG(st.st_mode)) {
      /* A device or FIFO (/dev/null, /dev/stdout): written in place, never truncated, renamed or removed. */
      o->fd = open(path, O_WRONLY | O_CLOEXEC | O_NOCTTY);
      if (o->fd < 0) {
        qmoe_set_error("%s: cannot open for writing: %s", path, strerror(errno));
        free_out(o);
        return QMOE_EIO;
      }
      o->direct = 1;
      *out = o;
      return 0;
    }
    /* A regular file, maybe through a symlink: the file the link points to is the one replaced. */
    o->target = realpath(path, NULL);
  } else {
    o->target = dup_str(path);
  }
  if (!o->target) {
    qmoe_set_error("%s: cannot resolve the output path: %s", path, strerror(errno));
    free_out(o);
    return QMOE_EIO;
  }
  char *dir = dir_of(o->target);
  if (!dir) {
    free_out(o);
    return oom(path);
  }
  struct stat ds;
  if (stat(dir, &ds) != 0 || !S_ISDIR(ds.st_mode)) {
    qmoe_set_error("%s: the output directory %s %s", path, dir, errno == ENOENT || !S_ISDIR(ds.st_mode) ?
                   "does not exist" : strerror(errno));
    free(dir);
    free_out(o);
    return QMOE_EIO;
  }
  if (access(dir, W_OK | X_OK) != 0) {
    qmoe_set_error("%s: cannot write in the output directory %s: %s", path, dir, strerror(errno));
    free(dir);
    free_out(o);
    return QMOE_EIO;
  }
  struct statvfs vs;
  if (size_hint > 0 && statvfs(dir, &vs) == 0) {
    unsigned long long avail = (unsigned long long)vs.f_bavail * (unsigned long long)vs.f_frsize;
    if (size_hint > avail) {
      qmoe_set_error("%s: the output needs %llu bytes but %s has %llu bytes free", path, (unsigned long long)size_hint,
                     dir, avail);
      free(dir);
      free_out(o);
      return QMOE_EIO;
    }
  }
  free(dir);
  size_t tl = strlen(o->target) + 48;
  o->tmp = malloc(tl);
  if (!o->tmp) {
    free_out(o);
    return oom(path);
  }
  install_handlers();
  /* O_CREAT|O_EXCL never follows a symlink planted at the name; another name is tried instead. */
  for (int attempt = 0; attempt < 100; attempt++) {
    if (attempt == 0) snprintf(o->tmp, tl, "%s.tmp%d", o->target, (int)getpid());
    else snprintf(o->tmp, tl, "%s.tmp%d.%d", o->target, (int)getpid(), attempt);
    /* The handler may run as soon as the file exists: register the name first. */
    o->slot = pending_add(o->tmp);
    o->fd = open(o->tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0666);
    if (o->fd >= 0) {
      o->created = 1;
      break;
    }
    int e = errno;
    pending_remove(o->slot);
    o->slot = -1;
    if (e != EEXIST) {
      qmoe_set_error("%s: cannot create the temporary file %s: %s", path, o->tmp, strerror(e));
      free_out(o);
      return QMOE_EIO;
    }
  }
  if (o->fd < 0) {
    qmoe_set_error("%s: cannot create a temporary file beside it: 100 names taken", path);
    free_out(o);
    return QMOE_EIO;
  }
  *out = o;
  return 0;
}

static int flush_buf(qmoe_out *o) {
  size_t done = 0;
  while (done < o->n) {
    ssize_t k = write(o->fd, o->buf + done, o->n - done);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) {
      int e = k < 0 ? errno : EIO;
      o->failed = 1;
      qmoe_set_error("%s: cannot write: %s", o->path, strerror(e));
      return QMOE_EIO;
    }
    done += (size_t)k;
  }
  o->n = 0;
  return 0;
}

int qmoe_out_write(qmoe_out *o, const void *buf, size_t n) {
  if (o->failed) {
    qmoe_set_error("%s: write after a failed write", o->path);
    return QMOE_EIO;
  }
  const unsigned char *p = buf;
  while (n) {
    size_t k = OUT_BUF - o->n < n ? OUT_BUF - o->n : n;
    memcpy(o->buf + o->n, p, k);
    o->n += k, p += k, n -= k;
    if (o->n == OUT_BUF) {
      int rc = flush_buf(o);
      if (rc) return rc;
    }
  }
  return 0;
}

void qmoe_out_abort(qmoe_out *o) {
  if (!o) return;
  if (o->fd >= 0 && !o->is_stdout) close(o->fd);
  if (o->created) unlink(o->tmp);
  pending_remove(o->slot);
  free_out(o);
}

/* Fails the commit: message set, temp file removed, o freed. */
static int commit_error(qmoe_out *o, const char *what, int e) {
  qmoe_set_error("%s: %s: %s", o->path, what, strerror(e));
  qmoe_out_abort(o);
  return QMOE_EIO;
}

int qmoe_out_commit(qmoe_out *o) {
  if (o->failed) {
    qmoe_set_error("%s: commit after a failed write", o->path);
    qmoe_out_abort(o);
    return QMOE_EIO;
  }
  int rc = flush_buf(o);
  if (rc) {
    char msg[1024];
    snprintf(msg, sizeof msg, "%s", qmoe_last_error());
    qmoe_out_abort(o);
    qmoe_set_error("%s", msg);
    return rc;
  }
  if (o->direct) {
    int fd = o->fd;
    o->fd = -1;
    if (!o->is_stdout && close(fd) != 0) return commit_error(o, "cannot write (close)", errno);
    free_out(o);
    return 0;
  }
  if (fsync(o->fd) != 0) return commit_error(o, "cannot write (fsync)", errno);
  int fd = o->fd;
  o->fd = -1;
  if (close(fd) != 0) return commit_error(o, "cannot write (close)", errno);
  struct stat st;
  if (lstat(o->target, &st) == 0 && !S_ISREG(st.st_mode)) {
    qmoe_set_error("%s: is no longer a regular file (replaced while writing); refusing to rename over it", o->path);
    qmoe_out_abort(o);
    return QMOE_EIO;
  }
  if (rename(o->tmp, o->target) != 0) return commit_error(o, "cannot rename the temporary file into place", errno);
  o->created = 0;
  pending_remove(o->slot);
  o->slot = -1;
  char *dir = dir_of(o->target);
  if (dir) {
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
      fsync(dfd); /* best effort: some file systems refuse fsync on a directory */
      close(dfd);
    }
    free(dir);
  }
  free_out(o);
  return 0;
}
