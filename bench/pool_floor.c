/* pool_floor.c - the plain-C floor for bench/pool_bench.lua:
 *   condvar N   one task at a time between two threads through a mutex and
 *               two condition variables (the submitter posts a task and
 *               waits for its answer; the worker waits for a task, runs
 *               x + 1, posts the answer): round trip in us */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t task_cv = PTHREAD_COND_INITIALIZER, answer_cv = PTHREAD_COND_INITIALIZER;
static int has_task, has_answer;
static long task, answer, n_tasks;

static void *worker(void *arg) {
  long i;
  (void)arg;
  for (i = 0; i < n_tasks; i++) {
    pthread_mutex_lock(&mu);
    while (!has_task) pthread_cond_wait(&task_cv, &mu);
    has_task = 0;
    answer = task + 1;
    has_answer = 1;
    pthread_cond_signal(&answer_cv);
    pthread_mutex_unlock(&mu);
  }
  return NULL;
}

int main(int argc, char **argv) {
  pthread_t t;
  long i;
  double t0;
  if (argc < 3 || strcmp(argv[1], "condvar")) {
    fprintf(stderr, "usage: pool_floor condvar N\n");
    return 2;
  }
  n_tasks = atol(argv[2]);
  pthread_create(&t, NULL, worker, NULL);
  t0 = now();
  for (i = 0; i < n_tasks; i++) {
    pthread_mutex_lock(&mu);
    task = i;
    has_task = 1;
    pthread_cond_signal(&task_cv);
    while (!has_answer) pthread_cond_wait(&answer_cv, &mu);
    has_answer = 0;
    if (answer != i + 1) abort();
    pthread_mutex_unlock(&mu);
  }
  printf("rtt_us %.3f\n", (now() - t0) / (double)n_tasks * 1e6);
  pthread_join(t, NULL);
  return 0;
}
