/* shm_floor.c - the plain-C floor for pt.add across processes: a counter
 * in MAP_SHARED memory under a robust, process-shared mutex (the same kind
 * of lock a shared table uses), incremented by 2 forked processes.
 *
 *   shm_floor [iterations-per-process [processes]]
 *
 * Prints one line: "shm_floor procs=2 ops=... seconds=... ops_per_sec=..." */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

struct shared {
  pthread_mutex_t mu;
  volatile uint64_t counter;
};

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
  long iters = argc > 1 ? atol(argv[1]) : 2000000;
  int procs = argc > 2 ? atoi(argv[2]) : 2, i;
  pthread_mutexattr_t a;
  struct shared *s;
  double t0, dt;
  if (iters <= 0 || procs <= 0 || procs > 64) {
    fprintf(stderr, "usage: %s [iterations-per-process [processes]]\n", argv[0]);
    return 2;
  }
  s = mmap(NULL, sizeof *s, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (s == MAP_FAILED) { perror("mmap"); return 1; }
  pthread_mutexattr_init(&a);
  pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
  pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
  pthread_mutex_init(&s->mu, &a);
  s->counter = 0;
  t0 = now();
  for (i = 0; i < procs; i++) {
    pid_t pid = fork();
    if (pid < 0) { perror("fork"); return 1; }
    if (pid == 0) {
      long n;
      for (n = 0; n < iters; n++) {
        if (pthread_mutex_lock(&s->mu) == EOWNERDEAD) pthread_mutex_consistent(&s->mu);
        s->counter++;
        pthread_mutex_unlock(&s->mu);
      }
      _exit(0);
    }
  }
  for (i = 0; i < procs; i++) {
    int st;
    if (wait(&st) < 0) { perror("wait"); return 1; }
  }
  dt = now() - t0;
  if (s->counter != (uint64_t)iters * (uint64_t)procs) {
    fprintf(stderr, "shm_floor: count %llu, expected %llu\n",
            (unsigned long long)s->counter, (unsigned long long)iters * (unsigned long long)procs);
    return 1;
  }
  printf("shm_floor procs=%d ops=%llu seconds=%.6f ops_per_sec=%.0f\n", procs,
         (unsigned long long)s->counter, dt, (double)s->counter / dt);
  return 0;
}
