/* emu.h: runs a generated CUDA kernel file on the host, for tests without a GPU. The fake NVRTC
 * (fake_nvrtc.c) compiles generated/cuda/<variant>.cu as C++ with this header force-included into a shared
 * object; the fake driver (fake_cuda.c) calls qmoe_emu_launch() in it. Every CUDA thread of a block is a fiber
 * (ucontext); __syncthreads, __syncwarp and the warp shuffles are barriers between fibers, so the kernels run
 * with real block/warp semantics (shared memory, lanes, the last-block counters), only slowly.
 * This is a logic check of the kernels, their launch geometry and the runtime — not of timing or of the
 * device's arithmetic (expf & co. are the host's). */
#ifndef QMOE_CUDA_EMU_H
#define QMOE_CUDA_EMU_H
#define QMOE_HOST_EMU 1
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <csetjmp>
#include <ucontext.h>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
#define __restrict__

struct qmoe_emu_dim3 { unsigned x, y, z; };
struct uint4 { unsigned x, y, z, w; };
struct int4 { int x, y, z, w; };
struct float4 { float x, y, z, w; };
struct float2 { float x, y; };
static inline float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }

struct qmoe_emu_thread {
  ucontext_t ctx; /* first entry only */
  jmp_buf jb;     /* later switches: _setjmp/_longjmp (no signal-mask system call, unlike swapcontext) */
  int started;
  qmoe_emu_dim3 tid;
  int lane, warp, done, waiting;
  unsigned wait_gen;
  void *stack;
};

struct qmoe_emu_state {
  qmoe_emu_dim3 block, grid, bid;
  qmoe_emu_thread *th;
  int n, cur, alive;
  int warp_alive[32];
  /* barriers: the block's and each warp's (arrivals and a generation that moves on release) */
  int blk_arrived, warp_arrived[32];
  unsigned blk_gen, warp_gen[32];
  unsigned long long slots[32][32]; /* shuffle values, per warp and lane */
  ucontext_t sched;
  jmp_buf sched_jb;
  void *kernel;
  const void *args;
};

/* Every kernel takes one struct qmoe_args by value: 8 addresses, 8 int64, 4 doubles and the tokens, 168 bytes,
 * passed in memory by the x86-64 ABI like any struct of twenty-one 8-byte words. */
struct qmoe_emu_args { unsigned long long w[21]; };
static qmoe_emu_state qmoe_emu;

#define threadIdx (qmoe_emu.th[qmoe_emu.cur].tid)
#define blockIdx (qmoe_emu.bid)
#define blockDim (qmoe_emu.block)
#define gridDim (qmoe_emu.grid)

static inline void qmoe_emu_yield() {
  qmoe_emu_thread *t = &qmoe_emu.th[qmoe_emu.cur];
  if (!_setjmp(t->jb)) _longjmp(qmoe_emu.sched_jb, 1);
}

/* Block barrier: exited threads count as arrived (as on the GPU since Volta). */
static inline void __syncthreads() {
  qmoe_emu_thread *t = &qmoe_emu.th[qmoe_emu.cur];
  unsigned gen = qmoe_emu.blk_gen;
  if (++qmoe_emu.blk_arrived == qmoe_emu.alive) {
    qmoe_emu.blk_arrived = 0;
    qmoe_emu.blk_gen++;
    return;
  }
  t->waiting = 1;
  while (qmoe_emu.blk_gen == gen) qmoe_emu_yield();
  t->waiting = 0;
}

static inline void __syncwarp(unsigned mask = 0xffffffffu) {
  (void)mask;
  qmoe_emu_thread *t = &qmoe_emu.th[qmoe_emu.cur];
  int w = t->warp;
  unsigned gen = qmoe_emu.warp_gen[w];
  if (++qmoe_emu.warp_arrived[w] == qmoe_emu.warp_alive[w]) {
    qmoe_emu.warp_arrived[w] = 0;
    qmoe_emu.warp_gen[w]++;
    return;
  }
  t->waiting = 1;
  while (qmoe_emu.warp_gen[w] == gen) qmoe_emu_yield();
  t->waiting = 0;
}

template <typename T> static inline T __shfl_xor_sync(unsigned mask, T v, int o) {
  static_assert(sizeof(T) <= 8, "shuffle of more than 8 bytes");
  qmoe_emu_thread *t = &qmoe_emu.th[qmoe_emu.cur];
  int w = t->warp, lane = t->lane;
  std::memcpy(&qmoe_emu.slots[w][lane], &v, sizeof(T));
  __syncwarp(mask);
  T r;
  std::memcpy(&r, &qmoe_emu.slots[w][(lane ^ o) & 31], sizeof(T));
  __syncwarp(mask);
  return r;
}

static inline unsigned __funnelshift_r(unsigned lo, unsigned hi, unsigned s) {
  s &= 31;
  return s ? (lo >> s) | (hi << (32 - s)) : lo;
}
static inline unsigned __byte_perm(unsigned x, unsigned y, unsigned s) {
  const unsigned long long v = (unsigned long long)y << 32 | x;
  unsigned r = 0;
  for (int n = 0; n < 4; n++) r |= (unsigned)((v >> (8 * ((s >> (4 * n)) & 7))) & 0xff) << (8 * n);
  return r;
}
template <typename T> static inline T __shfl_sync(unsigned mask, T v, int src) {
  static_assert(sizeof(T) <= 8, "shuffle of more than 8 bytes");
  qmoe_emu_thread *t = &qmoe_emu.th[qmoe_emu.cur];
  int w = t->warp, lane = t->lane;
  std::memcpy(&qmoe_emu.slots[w][lane], &v, sizeof(T));
  __syncwarp(mask);
  T r;
  std::memcpy(&r, &qmoe_emu.slots[w][src & 31], sizeof(T));
  __syncwarp(mask);
  return r;
}

/* The warp's predicate bits: each live lane leaves its own, then every lane reads all 32 (lanes that exited
 * count as 0, as on the GPU for a full mask). */
static inline unsigned __ballot_sync(unsigned mask, int pred) {
  qmoe_emu_thread *t = &qmoe_emu.th[qmoe_emu.cur];
  int w = t->warp, lane = t->lane;
  qmoe_emu.slots[w][lane] = pred ? 1 : 0;
  __syncwarp(mask);
  unsigned b = 0;
  for (int l = 0; l < 32; l++) {
    int alive = 0;
    for (int i = 0; i < qmoe_emu.n; i++)
      if (qmoe_emu.th[i].warp == w && qmoe_emu.th[i].lane == l && !qmoe_emu.th[i].done) alive = 1;
    if (alive && qmoe_emu.slots[w][l]) b |= 1u << l;
  }
  __syncwarp(mask);
  return b;
}
static inline int __popc(unsigned v) { return __builtin_popcount(v); }

template <typename T> static inline T __ldg(const T *p) { return *p; }
template <typename T> static inline T __ldcg(const T *p) { return *(const volatile T *)p; }
static inline void __threadfence() {}
static inline unsigned atomicInc(unsigned *p, unsigned v) {
  unsigned old = *p;
  *p = old >= v ? 0 : old + 1;
  return old;
}
static inline float __int_as_float(int i) { float f; std::memcpy(&f, &i, 4); return f; }
static inline float __uint_as_float(unsigned u) { float f; std::memcpy(&f, &u, 4); return f; }
static inline int qmoe_dp4a_us(uint32_t a, uint32_t b, int c) {
  for (int k = 0; k < 4; k++) c += (int)((a >> (8 * k)) & 0xff) * (int)(int8_t)((b >> (8 * k)) & 0xff);
  return c;
}
static inline int qmoe_dp4a_ss(uint32_t a, uint32_t b, int c) {
  for (int k = 0; k < 4; k++) c += (int)(int8_t)((a >> (8 * k)) & 0xff) * (int)(int8_t)((b >> (8 * k)) & 0xff);
  return c;
}
static inline int __float_as_int(float f) { int i; std::memcpy(&i, &f, 4); return i; }
/* One rounding each: the file is compiled with -ffp-contract=off. */
static inline float __fmul_rn(float a, float b) { return a * b; }
static inline float __fadd_rn(float a, float b) { return a + b; }
static inline float __fsub_rn(float a, float b) { return a - b; }
static inline float __fdiv_rn(float a, float b) { return a / b; }
static inline double __dmul_rn(double a, double b) { return a * b; }
static inline double __dadd_rn(double a, double b) { return a + b; }
using std::cos;
using std::exp;
using std::fma;
using std::pow;
using std::sin;
using std::sqrt;

static inline void qmoe_cp_async16(uint4 *smem, const uint4 *gmem) { std::memcpy(smem, gmem, 16); }
static inline void qmoe_grid_wait() {}
static inline void qmoe_prefetch_l2(const uint8_t *, const uint8_t *) {}
/* cvt.f32.f16 is exact; the host does the same conversion from the bits. */
static inline float qmoe_cu_f16(uint32_t h) {
  uint32_t s = (h & 0x8000u) << 16, e = (h >> 10) & 0x1Fu, m = h & 0x3FFu, u;
  if (e == 0x1Fu) u = s | 0x7F800000u | m << 13;
  else if (e == 0) {
    float v = (float)m * 0x1p-24f;
    return s ? -v : v;
  } else u = s | (e + 112u) << 23 | m << 13;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
static inline void qmoe_cp_async_wait_all() {}
static inline void qmoe_cp_async_commit() {}
static inline void qmoe_cp_async_wait_pending(int) {}

/* ---- the launcher, called by the fake driver ------------------------------------------------------- */

static void qmoe_emu_entry() {
  ((void (*)(qmoe_emu_args))qmoe_emu.kernel)(*(const qmoe_emu_args *)qmoe_emu.args);
  qmoe_emu_thread *t = &qmoe_emu.th[qmoe_emu.cur];
  t->done = 1;
  qmoe_emu.alive--;
  qmoe_emu.warp_alive[t->warp]--;
  /* A barrier that now has every live thread releases. */
  if (qmoe_emu.alive > 0 && qmoe_emu.blk_arrived == qmoe_emu.alive) {
    qmoe_emu.blk_arrived = 0;
    qmoe_emu.blk_gen++;
  }
  int w = t->warp;
  if (qmoe_emu.warp_alive[w] > 0 && qmoe_emu.warp_arrived[w] == qmoe_emu.warp_alive[w]) {
    qmoe_emu.warp_arrived[w] = 0;
    qmoe_emu.warp_gen[w]++;
  }
  _longjmp(qmoe_emu.sched_jb, 1); /* never return through uc_link: the scheduler's frame has moved on */
}

/* Runs KERNEL over the grid, blocks one after another, in a scrambled order (block i of the launch is
 * (i·S) mod the block count, S a prime that does not divide it): neighbouring blocks, and blocks of different
 * tokens (z), interleave, so a kernel that counts "the last block" over the wrong set of blocks fails here as
 * it would on a GPU, where blocks run in any order. Returns 0, or -1 when threads deadlock at a barrier (a kernel
 * bug the GPU would hang on). */
extern "C" __attribute__((visibility("default"))) int qmoe_emu_launch(void *kernel, const void *args,
                                                                     unsigned gx, unsigned gy, unsigned gz,
                                                                     unsigned bx, unsigned by, unsigned bz) {
  enum { STACK = 256 * 1024 };
  int n = (int)(bx * by * bz);
  if (n <= 0 || n > 1024 || by != 1 || bz != 1) return -2;
  qmoe_emu_thread *th = (qmoe_emu_thread *)std::calloc((size_t)n, sizeof *th);
  for (int i = 0; i < n; i++) th[i].stack = std::malloc(STACK);
  qmoe_emu.th = th;
  qmoe_emu.n = n;
  qmoe_emu.block = { bx, by, bz };
  qmoe_emu.grid = { gx, gy, gz };
  qmoe_emu.kernel = kernel;
  qmoe_emu.args = args;
  int rc = 0;
  const unsigned long long nblk = (unsigned long long)gx * gy * gz;
  static const unsigned long long primes[] = { 7919, 7927, 7933, 7937 };
  unsigned long long stride = 1;
  for (unsigned i = 0; i < 4 && stride == 1; i++)
    if (nblk % primes[i]) stride = primes[i];
  for (unsigned long long bi = 0; bi < nblk && !rc; bi++) {
    const unsigned long long lin = (bi * stride) % nblk;
    const unsigned x = (unsigned)(lin % gx), y = (unsigned)(lin / gx % gy), z = (unsigned)(lin / gx / gy);
        qmoe_emu.bid = { x, y, z };
        qmoe_emu.alive = n;
        qmoe_emu.blk_arrived = 0;
        for (int w = 0; w < 32; w++) {
          qmoe_emu.warp_alive[w] = 0;
          qmoe_emu.warp_arrived[w] = 0;
        }
        for (int i = 0; i < n; i++) {
          qmoe_emu_thread *t = &th[i];
          t->tid = { (unsigned)i, 0, 0 };
          t->lane = i & 31;
          t->warp = i >> 5;
          t->done = t->waiting = t->started = 0;
          qmoe_emu.warp_alive[t->warp]++;
          getcontext(&t->ctx);
          t->ctx.uc_stack.ss_sp = t->stack;
          t->ctx.uc_stack.ss_size = STACK;
          t->ctx.uc_link = &qmoe_emu.sched;
          makecontext(&t->ctx, qmoe_emu_entry, 0);
        }
        /* Round robin until every thread is done; a full pass in which every live thread waits at a barrier
         * that cannot release is a deadlock. */
        for (;;) {
          int live = 0, progressed = 0;
          for (int i = 0; i < n; i++) {
            if (th[i].done) continue;
            live++;
            unsigned before = qmoe_emu.blk_gen;
            unsigned wbefore = qmoe_emu.warp_gen[th[i].warp];
            int was_waiting = th[i].waiting;
            qmoe_emu.cur = i;
            if (!_setjmp(qmoe_emu.sched_jb)) {
              if (!th[i].started) {
                th[i].started = 1;
                setcontext(&th[i].ctx);
              }
              _longjmp(th[i].jb, 1);
            }
            if (!was_waiting || th[i].done || !th[i].waiting || qmoe_emu.blk_gen != before ||
                qmoe_emu.warp_gen[th[i].warp] != wbefore)
              progressed = 1;
          }
          if (!live) break;
          if (!progressed) {
            std::fprintf(stderr, "qmoe cuda-emu: deadlock in block (%u,%u,%u): threads wait at a barrier that "
                                 "cannot release\n", x, y, z);
            rc = -1;
            break;
          }
        }
      }
  for (int i = 0; i < n; i++) std::free(th[i].stack);
  std::free(th);
  return rc;
}

#endif
