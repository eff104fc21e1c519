/* frame.c - chunk headers and message reassembly for pipes (plain C).
 * See frame.h for the format. */
#include "frame.h"

#include <string.h>

static const unsigned char magic[4] = {'P', 'T', 'M', '1'};

static void put32(unsigned char *p, uint32_t v) {
  p[0] = (unsigned char)v; p[1] = (unsigned char)(v >> 8);
  p[2] = (unsigned char)(v >> 16); p[3] = (unsigned char)(v >> 24);
}

static uint32_t get32(const unsigned char *p) {
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
         (uint32_t)p[3] << 24;
}

/* FNV-1a of the first 12 bytes, finished with a mix. */
static uint32_t hdr_check(const unsigned char *p) {
  uint32_t h = 0x811c9dc5u;
  int i;
  for (i = 0; i < 12; i++) { h ^= p[i]; h *= 0x01000193u; }
  h ^= h >> 15; h *= 0x2c1b3c6du; h ^= h >> 12;
  return h;
}

void pt_frame_put(unsigned char *out, int kind, int flags, uint32_t len,
                  uint32_t total) {
  memcpy(out, magic, 4);
  out[4] = (unsigned char)kind;
  out[5] = (unsigned char)flags;
  out[6] = (unsigned char)len; out[7] = (unsigned char)(len >> 8);
  put32(out + 8, total);
  put32(out + 12, hdr_check(out));
}

/* The most data a chunk with these flags may carry: a whole message in
   one chunk may be larger than the others (see frame.h). */
static unsigned data_max(int flags) {
  return flags == (PT_FRAME_FIRST | PT_FRAME_LAST) ? PT_FRAME_ONEMAX : PT_FRAME_MAXDATA;
}

/* The field checks of pt_frame_get that the first n bytes (n < 16) allow:
   magic, kind, flags and the data length.  1: may still begin a header. */
int pt_frame_prefix(const unsigned char *p, size_t n) {
  size_t k = n < 4 ? n : 4;
  if (memcmp(p, magic, k) != 0) return 0;
  if (n > 4 && (p[4] < PT_FRAME_DATA || p[4] > PT_FRAME_SIDE)) return 0;
  if (n > 5 && (p[4] == PT_FRAME_ABORT ? p[5] != 0
                : p[4] == PT_FRAME_SIDE ? p[5] != (PT_FRAME_FIRST | PT_FRAME_LAST)
                : (p[5] & ~3) != 0)) return 0;
  if (n > 7) {
    unsigned len = (unsigned)p[6] | (unsigned)p[7] << 8;
    if (p[4] == PT_FRAME_ABORT ? len != 0 : len > data_max(p[5])) return 0;
    if (p[4] != PT_FRAME_ABORT && !(p[5] & PT_FRAME_LAST) && len != PT_FRAME_MAXDATA)
      return 0;
    if (p[4] == PT_FRAME_SIDE && len != PT_FRAME_MAXDATA) return 0;
  }
  return 1;
}

int pt_frame_get(const unsigned char *p, pt_frame_hdr *h) {
  if (memcmp(p, magic, 4) != 0 || get32(p + 12) != hdr_check(p)) return 0;
  h->kind = p[4];
  h->flags = p[5];
  h->len = (uint32_t)p[6] | (uint32_t)p[7] << 8;
  h->total = get32(p + 8);
  if (h->kind == PT_FRAME_ABORT)
    return h->flags == 0 && h->len == 0 && h->total == 0;
  if (h->kind == PT_FRAME_SIDE)             /* total: the side slot's tag */
    return h->flags == (PT_FRAME_FIRST | PT_FRAME_LAST) && h->len == PT_FRAME_MAXDATA;
  if (h->kind != PT_FRAME_DATA || (h->flags & ~3) || h->len > data_max(h->flags))
    return 0;
  if (!(h->flags & PT_FRAME_LAST) && h->len != PT_FRAME_MAXDATA) return 0;
  if (h->flags & PT_FRAME_FIRST) {          /* total: the message length */
    if (h->total > PT_MSG_MAX || h->len > h->total) return 0;
    if ((h->flags & PT_FRAME_LAST) ? h->len != h->total
                                   : h->total <= PT_FRAME_MAXDATA) return 0;
  } else {                                  /* total: this chunk's offset */
    if (h->total == 0 || h->total > PT_MSG_MAX - h->len) return 0;
  }
  return 1;
}

void pt_frame_asm_init(pt_frame_asm *a) {
  memset(a, 0, sizeof *a);
  pt_buf_init(&a->msg);
}

void pt_frame_asm_reset(pt_frame_asm *a) {
  a->msg.len = 0;
  a->total = 0;
  a->active = 0;
}

void pt_frame_asm_free(pt_frame_asm *a) {
  pt_buf_free(&a->msg);
  pt_frame_asm_init(a);
}

int pt_frame_step(pt_frame_asm *a, const char *p, size_t n, size_t *used) {
  pt_frame_hdr h;
  const char *data = p + PT_FRAME_HDR;
  *used = 0;
  if (n < PT_FRAME_HDR)
    return pt_frame_prefix((const unsigned char *)p, n) ? PT_FR_NEED : PT_FR_CORRUPT;
  if (!pt_frame_get((const unsigned char *)p, &h)) return PT_FR_CORRUPT;
  if (n < PT_FRAME_HDR + (size_t)h.len) return PT_FR_NEED;
  if (h.kind == PT_FRAME_ABORT) {
    *used = PT_FRAME_HDR;
    if (a->active) { pt_frame_asm_reset(a); return PT_FR_LOST; }
    a->orphan = 0;          /* the lost message (if any) was reported */
    return PT_FR_MORE;
  }
  if (h.flags & PT_FRAME_FIRST) {
    if (a->active) { pt_frame_asm_reset(a); return PT_FR_LOST; }
    a->orphan = 0;
    *used = PT_FRAME_HDR + h.len;
    if (h.flags & PT_FRAME_LAST) {          /* a whole message in one chunk */
      a->out = data;
      a->outlen = h.len;
      a->side = h.kind == PT_FRAME_SIDE;
      a->side_tag = h.total;
      return PT_FR_MSG;
    }
    a->msg.len = 0;
    if (pt_buf_reserve(&a->msg, h.total)) { *used = 0; return PT_FR_NOMEM; }
    pt_buf_add(&a->msg, data, h.len);
    a->total = h.total;
    a->active = 1;
    return PT_FR_MORE;
  }
  /* a continuation chunk */
  if (!a->active) {                         /* its first chunk was lost */
    *used = PT_FRAME_HDR + h.len;
    if (a->orphan) return PT_FR_MORE;
    a->orphan = 1;
    return PT_FR_LOST;
  }
  if (h.total != a->msg.len || (size_t)h.total + h.len > a->total ||
      ((h.flags & PT_FRAME_LAST) != 0) != ((size_t)h.total + h.len == a->total)) {
    pt_frame_asm_reset(a);
    return PT_FR_CORRUPT;
  }
  *used = PT_FRAME_HDR + h.len;
  pt_buf_add(&a->msg, data, h.len);         /* reserved at the first chunk */
  if (!(h.flags & PT_FRAME_LAST)) return PT_FR_MORE;
  a->active = 0;
  a->out = a->msg.data;
  a->outlen = a->msg.len;
  a->side = 0;
  return PT_FR_MSG;
}

size_t pt_frame_scan(const char *p, size_t n) {
  size_t i;
  pt_frame_hdr h;
  for (i = 1; i < n; i++) {
    const char *q;
    if (n - i < PT_FRAME_HDR) {             /* too short to tell: keep if a prefix */
      if (pt_frame_prefix((const unsigned char *)p + i, n - i)) return i;
      continue;
    }
    q = memchr(p + i, 'P', n - i);
    if (!q) return n;
    i = (size_t)(q - p);
    if (n - i < PT_FRAME_HDR) { i--; continue; }
    if (pt_frame_get((const unsigned char *)p + i, &h)) return i;
  }
  return n;
}
