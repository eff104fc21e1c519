/* bench/wait_floor.c - the plain-C floor for pt.wait (bench/wait_bench.lua):
 *
 *   pingpong thread|process N [spin|sleep]
 *       two threads (or two processes over MAP_SHARED memory) passing a
 *       turn through two words, each side waiting for the other's word to
 *       move; round trip in us.
 *
 *   spin (the default)  what a careful C program does, and procthread's
 *                       policy: spin up to 10 us (the CPU's pause, the
 *                       clock read every 32 pauses; no spin on one CPU),
 *                       then announce the sleep in a flag and FUTEX_WAIT
 *                       (shared).  The mover wakes (FUTEX_WAKE) only a
 *                       waiter that announced its sleep.
 *   sleep               FUTEX_WAIT at once, FUTEX_WAKE at every move.
 *
 * Plain C on purpose: no procthread code, so that the floor stays what the
 * OS and the CPU cost, whatever procthread's own wait does. */
#define _GNU_SOURCE
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define SPIN_S 10e-6            /* the longest spin before a sleep */
#define SPIN_STEP 32            /* pauses between two looks at the clock */

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

typedef struct turn {           /* one side's word, and its waiter's flag */
  uint32_t seq;
  uint32_t sleeping;            /* 1: the waiter may sleep on seq */
} turn;

static turn *turns;             /* [0]: ping's turn count, [1]: pong's */
static long n_rounds;
static int careful;             /* the spin policy: wake only a sleeper */
static int spinning;            /* careful, on more than one CPU: spin first */

static void relax(void) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  __asm__ __volatile__("yield");
#endif
}

static int moved(const turn *t, uint32_t v) {
  return __atomic_load_n(&t->seq, __ATOMIC_ACQUIRE) != v;
}

/* 1 when t->seq left v within the spin. */
static int spin(const turn *t, uint32_t v) {
  double until = now() + SPIN_S;
  int i;
  for (i = 1;; i++) {
    relax();
    if (moved(t, v)) return 1;
    if (i % SPIN_STEP == 0 && now() >= until) return 0;
  }
}

/* Wait while t->seq == v.  The flag is stored before the last look, and
   the mover stores seq before it reads the flag (both seq_cst): one of
   the two sees the other's store, so no wake is missed. */
static void wait_while(turn *t, uint32_t v) {
  if (moved(t, v) || (spinning && spin(t, v))) return;
  for (;;) {
    __atomic_store_n(&t->sleeping, 1, __ATOMIC_SEQ_CST);
    if (__atomic_load_n(&t->seq, __ATOMIC_SEQ_CST) != v) break;
    syscall(SYS_futex, &t->seq, FUTEX_WAIT, v, NULL, NULL, 0);
  }
  __atomic_store_n(&t->sleeping, 0, __ATOMIC_RELAXED);
}

static void set_wake(turn *t, uint32_t v) {
  __atomic_store_n(&t->seq, v, __ATOMIC_SEQ_CST);
  if (!careful || __atomic_load_n(&t->sleeping, __ATOMIC_SEQ_CST))
    syscall(SYS_futex, &t->seq, FUTEX_WAKE, 1, NULL, NULL, 0);
}

static void *pong(void *arg) {
  long i;
  (void)arg;
  for (i = 1; i <= n_rounds; i++) {
    wait_while(&turns[0], (uint32_t)(i - 1));
    set_wake(&turns[1], (uint32_t)i);
  }
  return NULL;
}

static int cpus(void) {
  cpu_set_t set;
  return sched_getaffinity(0, sizeof set, &set) == 0 ? CPU_COUNT(&set) : 1;
}

int main(int argc, char **argv) {
  pthread_t t;
  pid_t pid = 0;
  long i;
  double t0;
  int proc;
  if (argc < 4 || strcmp(argv[1], "pingpong") ||
      (argc > 4 && strcmp(argv[4], "spin") && strcmp(argv[4], "sleep"))) {
    fprintf(stderr, "usage: wait_floor pingpong thread|process N [spin|sleep]\n");
    return 2;
  }
  proc = !strcmp(argv[2], "process");
  n_rounds = atol(argv[3]);
  careful = argc < 5 || !strcmp(argv[4], "spin");
  spinning = careful && cpus() > 1;
  turns = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (turns == MAP_FAILED) return 1;
  if (proc) {
    if ((pid = fork()) == 0) { pong(NULL); _exit(0); }
  } else {
    pthread_create(&t, NULL, pong, NULL);
  }
  t0 = now();
  for (i = 1; i <= n_rounds; i++) {
    set_wake(&turns[0], (uint32_t)i);
    wait_while(&turns[1], (uint32_t)(i - 1));
  }
  printf("rtt_us %.3f\n", (now() - t0) / (double)n_rounds * 1e6);
  if (proc) waitpid(pid, NULL, 0);
  else pthread_join(t, NULL);
  return 0;
}
