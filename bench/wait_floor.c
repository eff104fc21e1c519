/* bench/wait_floor.c - the plain-C floor for pt.wait (bench/wait_bench.lua):
 *
 *   pingpong thread|process N   two threads (or two processes over
 *                               MAP_SHARED memory) passing a turn through
 *                               two futex words, each side waiting
 *                               (FUTEX_WAIT, shared) for the other's word to
 *                               move and waking it (FUTEX_WAKE); round trip
 *                               in us */
#define _GNU_SOURCE
#include <linux/futex.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static uint32_t *words;         /* [0]: ping's turn count, [1]: pong's */
static long n_rounds;

/* Sleep while *w == v. */
static void wait_while(uint32_t *w, uint32_t v) {
  while (__atomic_load_n(w, __ATOMIC_ACQUIRE) == v)
    syscall(SYS_futex, w, FUTEX_WAIT, v, NULL, NULL, 0);
}

static void set_wake(uint32_t *w, uint32_t v) {
  __atomic_store_n(w, v, __ATOMIC_RELEASE);
  syscall(SYS_futex, w, FUTEX_WAKE, 1, NULL, NULL, 0);
}

static void *pong(void *arg) {
  long i;
  (void)arg;
  for (i = 1; i <= n_rounds; i++) {
    wait_while(&words[0], (uint32_t)(i - 1));
    set_wake(&words[1], (uint32_t)i);
  }
  return NULL;
}

int main(int argc, char **argv) {
  pthread_t t;
  pid_t pid = 0;
  long i;
  double t0;
  int proc;
  if (argc < 4 || strcmp(argv[1], "pingpong")) {
    fprintf(stderr, "usage: wait_floor pingpong thread|process N\n");
    return 2;
  }
  proc = !strcmp(argv[2], "process");
  n_rounds = atol(argv[3]);
  words = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (words == MAP_FAILED) return 1;
  if (proc) {
    if ((pid = fork()) == 0) { pong(NULL); _exit(0); }
  } else {
    pthread_create(&t, NULL, pong, NULL);
  }
  t0 = now();
  for (i = 1; i <= n_rounds; i++) {
    set_wake(&words[0], (uint32_t)i);
    wait_while(&words[1], (uint32_t)(i - 1));
  }
  printf("rtt_us %.3f\n", (now() - t0) / (double)n_rounds * 1e6);
  if (proc) waitpid(pid, NULL, 0);
  else pthread_join(t, NULL);
  return 0;
}
