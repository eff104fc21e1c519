/* buf.h - growable byte buffers (plain C, no lua_State, no Lua header).
 * Used by the frames of pipes, the codec, and the records of workers. */
#ifndef PT_BUF_H
#define PT_BUF_H

#include <stddef.h>

typedef struct pt_buf {
  char *data;
  size_t len, cap;
} pt_buf;

void pt_buf_init(pt_buf *b);
int pt_buf_grow(pt_buf *b, size_t extra);         /* 0 ok, -1 ENOMEM */
int pt_buf_add(pt_buf *b, const void *p, size_t n);   /* 0 ok, -1 ENOMEM */
void pt_buf_free(pt_buf *b);
void pt_copy(void *dst, const void *src, size_t n);   /* memcpy, see buf.c */

/* Room for `extra` more bytes: 0 ok, -1 ENOMEM.  Inline: the codec asks
   once per value, and there is room nearly always. */
static inline int pt_buf_reserve(pt_buf *b, size_t extra) {
  return extra <= b->cap - b->len ? 0 : pt_buf_grow(b, extra);
}

#endif
