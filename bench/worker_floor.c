/* worker_floor.c - the plain-C floor for spawn+join:
 *   thread:  pthread_create + join of a thread that opens a fresh Lua
 *            state with the standard libraries and closes it;
 *   process: fork + _exit + waitpid.
 * Built twice.  As a program (worker_floor) it prints "thread_us <median>"
 * and "process_us <median>" (microseconds), and "minflt <n>": the
 * parent's minor page faults per fork.  As a Lua module
 * (worker_floor.so, PT_FLOOR_MODULE) it gives
 *   require("worker_floor").fork(n) -> median us, minor faults per fork
 *                                       of the parent, of the child
 *   require("worker_floor").minflt() -> minor faults of this process and
 *                                       of its children so far
 *   require("worker_floor").thread(n) -> median us of n thread floors (as
 *                                       the program's, inside this process)
 *   require("worker_floor").threaded() -> one pthread started and joined
 * the same fork + _exit + waitpid done in C from inside the calling Lua
 * process: a fork of that interpreter (its page tables and mappings,
 * bigger than the tiny program's) with nothing of Lua run around it. */
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

/* n threads, each opening a fresh Lua state and closing it, each joined:
   fills t[0..n) with the seconds of each; 0, or -1 when one failed. */
static int threads(double *t, int n) {
  int i;
  for (i = 0; i < n; i++) {
    pthread_t th;
    double t0 = now();
    if (pthread_create(&th, NULL, run, NULL) != 0) return -1;
    pthread_join(th, NULL);
    t[i] = now() - t0;
  }
  return 0;
}

/* n forks of this process, each child leaving at once: fills t[0..n)
   with the seconds of each; returns the parent's minor faults per fork
   (and in *child the children's), or -1 when a fork failed. */
static double forks(double *t, int n, double *child) {
  struct rusage r0, r1, c0, c1;
  int i;
  getrusage(RUSAGE_CHILDREN, &c0);
  getrusage(RUSAGE_SELF, &r0);
  for (i = 0; i < n; i++) {
    double t0 = now();
    pid_t p = fork();
    int st;
    if (p < 0) return -1;
    if (p == 0) _exit(0);
    waitpid(p, &st, 0);
    t[i] = now() - t0;
  }
  getrusage(RUSAGE_SELF, &r1);
  getrusage(RUSAGE_CHILDREN, &c1);
  *child = (double)(c1.ru_minflt - c0.ru_minflt) / n;
  return (double)(r1.ru_minflt - r0.ru_minflt) / n;
}

#ifdef PT_FLOOR_MODULE
int luaopen_worker_floor(lua_State *L);

static int l_fork(lua_State *L) {
  int n = (int)luaL_checkinteger(L, 1);
  double *t, flt, child;
  luaL_argcheck(L, n > 0 && n <= 1000000, 1, "count out of range");
  t = (double *)lua_newuserdata(L, sizeof(double) * (size_t)n);
  flt = forks(t, n, &child);
  if (flt < 0) return luaL_error(L, "fork failed");
  lua_pushnumber(L, median(t, n) * 1e6);
  lua_pushnumber(L, flt);
  lua_pushnumber(L, child);
  return 3;
}

static int l_thread(lua_State *L) {
  int n = (int)luaL_checkinteger(L, 1);
  double *t;
  luaL_argcheck(L, n > 0 && n <= 1000000, 1, "count out of range");
  t = (double *)lua_newuserdata(L, sizeof(double) * (size_t)n);
  if (threads(t, n) != 0) return luaL_error(L, "pthread_create failed");
  lua_pushnumber(L, median(t, n) * 1e6);
  return 1;
}

static void *nothing(void *arg) { return arg; }

/* threaded() -> true: one pthread started and joined.  A process that has
   ever had a second thread forks dearer for the rest of its life (a C
   program: 111 -> 150 us here); the C floor program and procthread's
   bench process have had threads before they fork, so a peer measured
   beside them is given one too. */
static int l_threaded(lua_State *L) {
  pthread_t t;
  if (pthread_create(&t, NULL, nothing, NULL) != 0) return luaL_error(L, "pthread_create failed");
  pthread_join(t, NULL);
  lua_pushboolean(L, 1);
  return 1;
}

/* minflt() -> the minor faults so far of this process, of its children
   (for a peer that has no getrusage of its own) */
static int l_minflt(lua_State *L) {
  struct rusage s, c;
  getrusage(RUSAGE_SELF, &s);
  getrusage(RUSAGE_CHILDREN, &c);
  lua_pushnumber(L, (double)s.ru_minflt);
  lua_pushnumber(L, (double)c.ru_minflt);
  return 2;
}

int luaopen_worker_floor(lua_State *L) {
  static const luaL_Reg fns[] = {
    {"fork", l_fork}, {"thread", l_thread}, {"minflt", l_minflt}, {"threaded", l_threaded},
    {NULL, NULL}};
  const luaL_Reg *f;
  lua_newtable(L);
  for (f = fns; f->name; f++) {             /* luaL_setfuncs is not in 5.1 */
    lua_pushcfunction(L, f->func);
    lua_setfield(L, -2, f->name);
  }
  return 1;
}
#else
int main(int argc, char **argv) {
  int n = argc > 1 ? atoi(argv[1]) : 2000;
  double *t = malloc(sizeof(double) * (size_t)n);
  double flt, child;
  if (threads(t, n / 10 + 1) != 0 || threads(t, n) != 0) return 1;   /* warm-up, then measured */
  printf("thread_us %.2f\n", median(t, n) * 1e6);
  if ((flt = forks(t, n, &child)) < 0) return 1;
  printf("process_us %.2f\n", median(t, n) * 1e6);
  printf("minflt %.1f\n", flt);
  free(t);
  return 0;
}
#endif
