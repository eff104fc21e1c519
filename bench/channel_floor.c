/* channel_floor.c - the plain-C floors for bench/channel_bench.lua:
 *   queue N SIZE   a mutex/condvar bounded queue (64 slots) between two
 *                  threads, SIZE-byte messages copied in and out; msg/s
 *   pingpong N     two threads passing a turn through one futex word
 *                  (FUTEX_WAIT/WAKE, shared); round trip in us */
#define _GNU_SOURCE
#include <linux/futex.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define CAP 64

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t notempty = PTHREAD_COND_INITIALIZER, notfull = PTHREAD_COND_INITIALIZER;
static char *slots[CAP];
static size_t lens[CAP];
static unsigned head, count;
static long n_msgs;
static size_t size;

static void *consumer(void *arg) {
  char *buf = malloc(size + 1);
  long i;
  (void)arg;
  for (i = 0; i < n_msgs; i++) {
    pthread_mutex_lock(&mu);
    while (count == 0) pthread_cond_wait(&notempty, &mu);
    memcpy(buf, slots[head], lens[head]);
    free(slots[head]);
    head = (head + 1) % CAP;
    count--;
    pthread_cond_signal(&notfull);
    pthread_mutex_unlock(&mu);
  }
  free(buf);
  return NULL;
}

static void queue(void) {
  pthread_t t;
  char *msg = calloc(1, size + 1);
  long i;
  double t0 = now();
  pthread_create(&t, NULL, consumer, NULL);
  for (i = 0; i < n_msgs; i++) {
    char *m = malloc(size + 1);
    memcpy(m, msg, size);
    pthread_mutex_lock(&mu);
    while (count == CAP) pthread_cond_wait(&notfull, &mu);
    slots[(head + count) % CAP] = m;
    lens[(head + count) % CAP] = size;
    count++;
    pthread_cond_signal(&notempty);
    pthread_mutex_unlock(&mu);
  }
  pthread_join(t, NULL);
  printf("msgs_per_s %.0f\n", (double)n_msgs / (now() - t0));
  free(msg);
}

static unsigned turn;      /* 0: ping's turn, 1: pong's */

static void pass(unsigned mine) {
  while (__atomic_load_n(&turn, __ATOMIC_ACQUIRE) != mine)
    syscall(SYS_futex, &turn, FUTEX_WAIT, 1 - mine, NULL, NULL, 0);
}

static void give(unsigned to) {
  __atomic_store_n(&turn, to, __ATOMIC_RELEASE);
  syscall(SYS_futex, &turn, FUTEX_WAKE, 1, NULL, NULL, 0);
}

static void *pong(void *arg) {
  long i;
  (void)arg;
  for (i = 0; i < n_msgs; i++) { pass(1); give(0); }
  return NULL;
}

static void pingpong(void) {
  pthread_t t;
  long i;
  double t0;
  pthread_create(&t, NULL, pong, NULL);
  t0 = now();
  for (i = 0; i < n_msgs; i++) { give(1); pass(0); }
  pthread_join(t, NULL);
  printf("rtt_us %.3f\n", (now() - t0) / (double)n_msgs * 1e6);
}

int main(int argc, char **argv) {
  if (argc < 3) { fprintf(stderr, "usage: channel_floor queue N SIZE | pingpong N\n"); return 2; }
  n_msgs = atol(argv[2]);
  size = argc > 3 ? (size_t)atol(argv[3]) : 8;
  if (!strcmp(argv[1], "queue")) queue();
  else pingpong();
  return 0;
}
