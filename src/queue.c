/* queue.c - the channel's queue in the shared arena (see queue.h).
 *
 *   queue    object header (obj.h), robust lock, capacity, the position word,
 *            the closed flag, two condition variables (wait.h), then the
 *            slots, one cache line each
 *   pos      tail << 32 | head: messages ever put and ever taken (mod
 *            2^32); count = tail - head.  One store publishes a put or a take.
 *
 * Crash safety (a process SIGKILLed at any instant):
 *   - put writes the slot first, invisible until the store of pos; a kill
 *     before it leaves the queue as it was (the message is lost, and its
 *     block and the counts it holds leak);
 *   - get copies the slot out (or takes its block) before the store of pos;
 *     a kill after it loses that one message;
 *   - sleepers are woken before the publishing store and pass through the
 *     lock (wait.h, pt_cond), so a kill between the two never leaves a
 *     sleeper waiting for a change that happened;
 *   - the lock is robust: the next locker takes it over, and since every
 *     change is one store there is nothing to repair but to count it.
 */
#include "queue.h"
#include "obj.h"
#include "wait.h"

#include <errno.h>
#include <string.h>

#define QUEUE_MAGIC 0x71756531u                /* "que1" */

typedef struct qslot {
  uint64_t len;
  union {
    pt_off block;
    char inl[PT_QUEUE_INLINE];
  } u;
} qslot;

typedef struct queue {
  pt_obj obj;
  pthread_mutex_t mu;
  uint64_t pos;
  uint32_t cap, closed;
  pt_cond notempty, notfull;
  qslot slots[];
} queue;

#define Q(off) PT_SHM_PTR(queue, off)
#define HEAD(pos) ((uint32_t)(pos))
#define TAIL(pos) ((uint32_t)((pos) >> 32))
#define POS(tail, head) (((uint64_t)(tail) << 32) | (uint64_t)(head))

static void repair(void *q) {
  (void)q;                      /* every change is one store: nothing half done */
  pt_shm_note_recovery();
}

pt_off pt_queue_new(uint32_t cap) {
  pt_off off;
  queue *q;
  if (cap < 1 || cap > PT_QUEUE_MAXCAP) { errno = EINVAL; return 0; }
  off = pt_shm_alloc_aligned(sizeof(queue) + (size_t)cap * sizeof(qslot), 64);
  if (!off) { errno = ENOMEM; return 0; }
  q = Q(off);
  memset(q, 0, sizeof *q);
  if (pt_lock_init(&q->mu) != PT_OK) {
    int e = errno;
    pt_shm_free_aligned(off);
    errno = e;
    return 0;
  }
  q->cap = cap;
  q->obj.refs = 1;
  __atomic_store_n(&q->obj.magic, QUEUE_MAGIC, __ATOMIC_RELEASE);
  return off;
}

int pt_queue_valid(pt_off off) { return pt_obj_valid(off, QUEUE_MAGIC, sizeof(queue)); }

static const char *slot_data(qslot *s) {
  return s->len > PT_QUEUE_INLINE ? PT_SHM_PTR(char, s->u.block) : s->u.inl;
}

void pt_queue_decref(pt_off off, void (*discard)(const char *, size_t)) {
  queue *q = Q(off);
  uint32_t i, head, tail;
  if (!pt_obj_decref(off)) return;
  head = HEAD(q->pos);
  tail = TAIL(q->pos);
  for (i = head; i != tail; i++) {          /* nobody else can see it now */
    qslot *s = &q->slots[i % q->cap];
    discard(slot_data(s), (size_t)s->len);
    if (s->len > PT_QUEUE_INLINE) pt_shm_free(s->u.block);
  }
  q->obj.magic = 0;
  pthread_mutex_destroy(&q->mu);
  pt_shm_free_aligned(off);
}

void pt_qmsg_init(pt_qmsg *m, const char *data, size_t len) {
  m->data = data;
  m->len = len;
  m->block = 0;
}

void pt_qmsg_done(pt_qmsg *m) {
  if (m->block) pt_shm_free(m->block);
  m->block = 0;
}

static int expired(double deadline) {
  return deadline >= 0 && pt_clock_now() >= deadline;
}

/* Holding the lock: put m into the free slot at tail. */
static void put_slot(queue *q, pt_qmsg *m, uint64_t pos) {
  qslot *s = &q->slots[TAIL(pos) % q->cap];
  s->len = m->len;
  if (m->block) s->u.block = m->block;
  else if (m->len) memcpy(s->u.inl, m->data, m->len);
  pt_cond_wake(&q->notempty);
  __atomic_store_n(&q->pos, POS(TAIL(pos) + 1, HEAD(pos)), __ATOMIC_RELEASE);
  m->block = 0;                                /* the queue's now */
}

/* Holding the lock: take the message at head into m. */
static void get_slot(queue *q, pt_qmsg *m, uint64_t pos) {
  qslot *s = &q->slots[HEAD(pos) % q->cap];
  m->len = (size_t)s->len;
  if (s->len > PT_QUEUE_INLINE) {
    m->block = s->u.block;
    m->data = PT_SHM_PTR(char, m->block);
  } else {
    if (m->len) memcpy(m->inl, s->u.inl, m->len);
    m->block = 0;
    m->data = m->inl;
  }
  pt_cond_wake(&q->notfull);
  __atomic_store_n(&q->pos, POS(TAIL(pos), HEAD(pos) + 1), __ATOMIC_RELEASE);
}

/* Holding the lock: let it go and spin a little for pos to change (the
   other side is often about to act), then take it again.  1: changed. */
static int spin(queue *q, uint64_t pos) {
  int changed;
  pt_unlock(&q->mu);
  changed = pt_spin_while(&q->pos, pos);
  pt_lock(&q->mu, repair, q);
  return changed;
}

int pt_queue_put(pt_off off, pt_qmsg *m, double deadline, const volatile int *cancel) {
  queue *q = Q(off);
  int r;
  if (m->len > PT_QUEUE_INLINE && !m->block) {  /* fill it before locking */
    m->block = pt_shm_alloc(m->len);
    if (!m->block) return PT_NOMEM;
    memcpy(PT_SHM_PTR(char, m->block), m->data, m->len);
  }
  if (pt_lock(&q->mu, repair, q) == PT_ERR) return PT_ERR;
  for (;;) {
    uint64_t pos = q->pos;
    if (q->closed) { r = PT_CLOSED; break; }
    if (TAIL(pos) - HEAD(pos) < q->cap) { put_slot(q, m, pos); r = PT_OK; break; }
    if (expired(deadline)) { r = PT_TIMEOUT; break; }
    if (spin(q, pos)) continue;
    r = pt_cond_wait(&q->notfull, &q->mu, deadline, cancel, repair, q);
    if (r != PT_OK) break;
  }
  pt_unlock(&q->mu);
  return r;
}

int pt_queue_get(pt_off off, pt_qmsg *m, double deadline, const volatile int *cancel) {
  queue *q = Q(off);
  int r;
  m->block = 0;
  if (pt_lock(&q->mu, repair, q) == PT_ERR) return PT_ERR;
  for (;;) {
    uint64_t pos = q->pos;
    if (TAIL(pos) != HEAD(pos)) { get_slot(q, m, pos); r = PT_OK; break; }
    if (q->closed) { r = PT_CLOSED; break; }
    if (expired(deadline)) { r = PT_TIMEOUT; break; }
    if (spin(q, pos)) continue;
    r = pt_cond_wait(&q->notempty, &q->mu, deadline, cancel, repair, q);
    if (r != PT_OK) break;
  }
  pt_unlock(&q->mu);
  return r;
}

void pt_queue_close(pt_off off) {
  queue *q = Q(off);
  if (pt_lock(&q->mu, repair, q) == PT_ERR) return;
  pt_cond_wake(&q->notempty);
  pt_cond_wake(&q->notfull);
  __atomic_store_n(&q->closed, 1, __ATOMIC_RELEASE);
  pt_unlock(&q->mu);
}

uint32_t pt_queue_count(pt_off off) {
  uint64_t pos = __atomic_load_n(&Q(off)->pos, __ATOMIC_ACQUIRE);
  return TAIL(pos) - HEAD(pos);
}

uint32_t pt_queue_capacity(pt_off off) { return Q(off)->cap; }

int pt_queue_watch(pt_off off, const uint32_t **word, uint32_t *value) {
  queue *q = Q(off);
  int ready;
  if (pt_queue_count(off) || __atomic_load_n(&q->closed, __ATOMIC_ACQUIRE)) return 1;
  if (pt_lock(&q->mu, repair, q) == PT_ERR) return 1;   /* the get will say why */
  ready = TAIL(q->pos) != HEAD(q->pos) || q->closed;
  if (!ready) {                 /* as pt_cond_wait does, without the sleep */
    __atomic_store_n(&q->notempty.sleeping, 1, __ATOMIC_RELAXED);
    *value = __atomic_load_n(&q->notempty.seq, __ATOMIC_RELAXED);
    *word = &q->notempty.seq;
  }
  pt_unlock(&q->mu);
  return ready;
}
