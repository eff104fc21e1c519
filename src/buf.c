/* buf.c - growable byte buffers (plain C).  See buf.h. */
#include "buf.h"

#include <stdlib.h>
#include <string.h>

void pt_buf_init(pt_buf *b) { b->data = NULL; b->len = b->cap = 0; }

int pt_buf_grow(pt_buf *b, size_t extra) {
  size_t need = b->len + extra, cap;
  char *p;
  if (need < b->len) return -1;                 /* overflow */
  if (need <= b->cap) return 0;
  cap = b->cap ? b->cap : 256;
  while (cap < need) {
    if (cap > ((size_t)-1) / 2) { cap = need; break; }
    cap *= 2;
  }
  p = realloc(b->data, cap);
  if (!p) return -1;
  b->data = p; b->cap = cap;
  return 0;
}

/* Copies of a few KiB in 64-byte steps: glibc's memcpy takes "rep movsb"
   at these sizes, which some CPUs (seen: AMD EPYC under a hypervisor) run
   several times slower for unaligned buffers than plain vector moves. */
void pt_copy(void *dst, const void *src, size_t n) {
  char *d = (char *)dst;
  const char *s = (const char *)src;
  if (n > 65536) { memcpy(d, s, n); return; }
  while (n >= 64) { memcpy(d, s, 64); d += 64; s += 64; n -= 64; }
  memcpy(d, s, n);
}

int pt_buf_add(pt_buf *b, const void *p, size_t n) {
  if (pt_buf_reserve(b, n)) return -1;
  if (n) pt_copy(b->data + b->len, p, n);
  b->len += n;
  return 0;
}

void pt_buf_free(pt_buf *b) { free(b->data); pt_buf_init(b); }
