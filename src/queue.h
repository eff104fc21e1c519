/* queue.h - the channel's queue: a bounded FIFO of byte strings in the
 * shared arena.  Plain C, no Lua header (channel.c is its Lua binding).
 *
 * Every message is a byte string; up to PT_QUEUE_INLINE bytes live inside
 * the queue's slot, longer ones in an arena block of their own that the
 * sender fills before it takes the queue's lock and that the receiver
 * frees after it has released it (pt_qmsg_done).  See queue.c for the
 * crash-safety argument. */
#ifndef PT_QUEUE_H
#define PT_QUEUE_H

#include <stddef.h>
#include <stdint.h>
#include "shm.h"
#include "wait.h"

#define PT_QUEUE_INLINE 56
#define PT_QUEUE_MAXCAP (1u << 20)
#define PT_NOMEM 6             /* status: the arena is full (wait.h's PT_*) */

/* A message on its way in or out.  data/len: the bytes; block: the arena
   block holding them (0 for an inline message). */
typedef struct pt_qmsg {
  const char *data;
  size_t len;
  pt_off block;
  char inl[PT_QUEUE_INLINE];
} pt_qmsg;

/* A new queue of cap (1..PT_QUEUE_MAXCAP) slots with one reference, or 0
   when the arena is full (or cannot be mapped: errno says). */
pt_off pt_queue_new(uint32_t cap);
/* 1 when off looks like a queue (for references that come in messages).
   Counts are taken with pt_obj_incref (obj.h). */
int pt_queue_valid(pt_off off);
/* Drop a reference, only while the queue is of generation gen (obj.h);
   the last one discards the messages still queued (discard(data, len)
   drops what they reference) and frees the queue. */
void pt_queue_decref(pt_off q, uint64_t gen, void (*discard)(const char *, size_t));

/* Put the len bytes at data at the tail, waiting while the queue is full
   until the deadline (wait.h; 0 timeout: a deadline already past), or
   what w names (wait.h: cancel flag, interrupt word).
   m holds the message between calls: pt_qmsg_init it first; a retry after
   PT_INTR reuses it.  PT_OK (the queue owns the bytes now), PT_TIMEOUT,
   PT_CLOSED, PT_CANCELLED, PT_INTR, PT_NOMEM (nothing was written),
   PT_ERR.  Unless PT_OK, call pt_qmsg_done(m) when giving up. */
void pt_qmsg_init(pt_qmsg *m, const char *data, size_t len);
int pt_queue_put(pt_off q, pt_qmsg *m, double deadline, const pt_wake *w);
/* Take the oldest message into m, waiting while the queue is empty.
   PT_OK (read m->data, m->len, then pt_qmsg_done), PT_TIMEOUT,
   PT_CLOSED (closed and drained), PT_CANCELLED, PT_INTR, PT_ERR. */
int pt_queue_get(pt_off q, pt_qmsg *m, double deadline, const pt_wake *w);
/* Free the block a message still holds. */
void pt_qmsg_done(pt_qmsg *m);

/* Close: every waiter wakes; put fails from now on; get drains. */
void pt_queue_close(pt_off q);
uint32_t pt_queue_count(pt_off q);
/* (pt.select) 1 when a get would not wait (a message, or closed).  Else
   0, and a put or a close wakes a sleeper of *word while it holds *value
   (the queue's not-empty condition, marked as slept on). */
int pt_queue_watch(pt_off q, const uint32_t **word, uint32_t *value);
uint32_t pt_queue_capacity(pt_off q);

#endif
