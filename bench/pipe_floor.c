/* pipe_floor.c - the plain-C floor for procthread pipes.
 *
 *   pipe_floor pingpong N   8-byte ping-pong between two processes over two
 *                           pipes, N round trips: prints "rtt_us <median of
 *                           5 batches>"
 *   pipe_floor stream MIB   a child writes MIB MiB in 4 KiB write()s, the
 *                           parent reads 4 KiB read()s: prints "mbps <MB/s>"
 *
 * What a C program does with no framing, no locks and no codec: the floor
 * procthread's pipes are measured against (bench/pipe_bench.lua). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void full_write(int fd, const char *p, size_t n) {
  while (n > 0) {
    ssize_t w = write(fd, p, n);
    if (w < 0) { if (errno == EINTR) continue; perror("write"); exit(1); }
    p += w; n -= (size_t)w;
  }
}

static int full_read(int fd, char *p, size_t n) {
  while (n > 0) {
    ssize_t r = read(fd, p, n);
    if (r == 0) return 0;
    if (r < 0) { if (errno == EINTR) continue; perror("read"); exit(1); }
    p += r; n -= (size_t)r;
  }
  return 1;
}

static int cmp(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static int pingpong(long n) {
  int to[2], from[2];
  char buf[8] = "pingpong";
  double t[5];
  int b;
  pid_t pid;
  if (pipe(to) || pipe(from)) { perror("pipe"); return 1; }
  pid = fork();
  if (pid < 0) { perror("fork"); return 1; }
  if (pid == 0) {
    close(to[1]); close(from[0]);
    while (full_read(to[0], buf, 8)) full_write(from[1], buf, 8);
    _exit(0);
  }
  close(to[0]); close(from[1]);
  for (b = 0; b < 5; b++) {
    long i;
    double t0 = now();
    for (i = 0; i < n; i++) {
      full_write(to[1], buf, 8);
      if (!full_read(from[0], buf, 8)) { fprintf(stderr, "child died\n"); return 1; }
    }
    t[b] = (now() - t0) / (double)n * 1e6;
  }
  close(to[1]);
  waitpid(pid, NULL, 0);
  qsort(t, 5, sizeof t[0], cmp);
  printf("rtt_us %.3f\n", t[2]);
  return 0;
}

static int stream(long mib) {
  int fds[2];
  static char buf[4096];
  long total = mib * 1024 * 1024, got = 0;
  double t0;
  pid_t pid;
  if (pipe(fds)) { perror("pipe"); return 1; }
  memset(buf, 'x', sizeof buf);
  t0 = now();
  pid = fork();
  if (pid < 0) { perror("fork"); return 1; }
  if (pid == 0) {
    long sent;
    close(fds[0]);
    for (sent = 0; sent < total; sent += 4096) full_write(fds[1], buf, 4096);
    _exit(0);
  }
  close(fds[1]);
  for (;;) {
    ssize_t r = read(fds[0], buf, 4096);
    if (r == 0) break;
    if (r < 0) { if (errno == EINTR) continue; perror("read"); return 1; }
    got += r;
  }
  waitpid(pid, NULL, 0);
  if (got != total) { fprintf(stderr, "short stream\n"); return 1; }
  printf("mbps %.1f\n", (double)total / (now() - t0) / 1e6);
  return 0;
}

int main(int argc, char **argv) {
  if (argc == 3 && strcmp(argv[1], "pingpong") == 0) return pingpong(atol(argv[2]));
  if (argc == 3 && strcmp(argv[1], "stream") == 0) return stream(atol(argv[2]));
  fprintf(stderr, "usage: %s pingpong N | stream MIB\n", argv[0]);
  return 2;
}
