/* worker_floor.c - the plain-C floor for spawn+join:
 *   thread:  pthread_create + join of a thread that opens a fresh Lua
 *            state with the standard libraries and closes it;
 *   process: fork + _exit + waitpid.
 * Prints "thread_us <median>" and "process_us <median>" (microseconds),
 * and "minflt <n>": the parent's minor page faults per fork. */
#include <lua.h>
#include <lauxlib.h>
#include <lualib.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void *run(void *arg) {
  lua_State *L = luaL_newstate();
  (void)arg;
  luaL_openlibs(L);
  lua_close(L);
  return NULL;
}

static int cmp(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static double median(double *v, int n) {
  qsort(v, (size_t)n, sizeof *v, cmp);
  return v[n / 2];
}

int main(int argc, char **argv) {
  int n = argc > 1 ? atoi(argv[1]) : 2000, i;
  double *t = malloc(sizeof(double) * (size_t)n);
  struct rusage r0, r1;
  for (i = 0; i < n / 10; i++) {            /* warm-up */
    pthread_t th;
    pthread_create(&th, NULL, run, NULL);
    pthread_join(th, NULL);
  }
  for (i = 0; i < n; i++) {
    pthread_t th;
    double t0 = now();
    if (pthread_create(&th, NULL, run, NULL) != 0) return 1;
    pthread_join(th, NULL);
    t[i] = now() - t0;
  }
  printf("thread_us %.2f\n", median(t, n) * 1e6);
  getrusage(RUSAGE_SELF, &r0);
  for (i = 0; i < n; i++) {
    double t0 = now();
    pid_t p = fork();
    int st;
    if (p < 0) return 1;
    if (p == 0) _exit(0);
    waitpid(p, &st, 0);
    t[i] = now() - t0;
  }
  getrusage(RUSAGE_SELF, &r1);
  printf("process_us %.2f\n", median(t, n) * 1e6);
  printf("minflt %.1f\n", (double)(r1.ru_minflt - r0.ru_minflt) / n);
  free(t);
  return 0;
}
