/* queue.c - the channel's queue in the shared arena (see queue.h).
 *
 *   queue    object header (obj.h), capacity, the closed flag, then two
 *            ends, then the slots, one cache line each
 *   end      the put end (tail) and the get end (head): a robust lock, the
 *            index (messages ever put / ever taken) on a cache line of its
 *            own, a condition variable (wait.h) for those who wait for
 *            that index to move, and what the end last read of the other
 *            end's index.  count = tail - head.
 *
 * Senders take only the put end's lock, receivers only the get end's, so a
 * sender and a receiver never wait for each other's lock, and each side's
 * lock line stays in its own CPU's cache.  A sender reads the head only when
 * the copy it read last says the queue is full (a receiver the tail, when
 * it says empty).  One who must sleep for the other end to move sleeps on
 * that end's condition variable, under that end's lock: it lets its own
 * lock go first, so nobody holds both but pt_queue_close (put, then get).
 *
 * Crash safety (a process SIGKILLed at any instant):
 *   - put writes the slot first, invisible until the store of the tail; a
 *     kill before it leaves the queue as it was (the message is lost, and
 *     its block and the counts it holds leak);
 *   - get copies the slot out (or takes its block) before the store of the
 *     head; a kill after it loses that one message;
 *   - sleepers are woken before the publishing store and pass through the
 *     lock of the end they slept on (wait.h, pt_cond), so a kill between the
 *     two never leaves a sleeper waiting for a change that happened;
 *   - the locks are robust: the next locker takes one over, and since every
 *     change is one store there is nothing to repair but to count it.
 */
#include "queue.h"
#include "obj.h"
#include "wait.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define QUEUE_MAGIC 0x71756532u                /* "que2" */

typedef struct qslot {
  uint64_t len;
  union {
    pt_off block;
    char inl[PT_QUEUE_INLINE];
  } u;
} qslot;

typedef struct qend {
  pthread_mutex_t mu;
  pt_cond waiters;              /* for index to move; guarded by mu */
  uint64_t seen;                /* the other end's index, as last read; mu */
  _Alignas(64) uint64_t index;  /* stored under mu, read by anyone */
  char pad[56];
} qend;

typedef struct queue {
  pt_obj obj;
  uint32_t cap, closed;
  _Alignas(64) qend put, get;
  qslot slots[];
} queue;

#define Q(off) PT_SHM_PTR(queue, off)
#define LOAD(w) __atomic_load_n(&(w), __ATOMIC_ACQUIRE)

pt_off pt_queue_new(uint32_t cap) {
  pt_off off;
  queue *q;
  if (cap < 1 || cap > PT_QUEUE_MAXCAP) { errno = EINVAL; return 0; }
  off = pt_shm_alloc_aligned(sizeof(queue) + (size_t)cap * sizeof(qslot), 64);
  if (!off) { errno = ENOMEM; return 0; }
  q = Q(off);
  memset(q, 0, sizeof *q);
  if (pt_lock_init(&q->put.mu, 0) != 0 || pt_lock_init(&q->get.mu, 0) != 0) {
    int e = errno;
    pthread_mutex_destroy(&q->put.mu);
    pt_shm_free_aligned(off);
    errno = e;
    return 0;
  }
  q->cap = cap;
  pt_obj_publish(off, QUEUE_MAGIC);
  return off;
}

int pt_queue_valid(pt_off off) { return pt_obj_valid(off, QUEUE_MAGIC, sizeof(queue)); }

static const char *slot_data(qslot *s) {
  return s->len > PT_QUEUE_INLINE ? PT_SHM_PTR(char, s->u.block) : s->u.inl;
}

void pt_queue_decref(pt_off off, uint64_t gen, void (*discard)(const char *, size_t)) {
  queue *q = Q(off);
  uint64_t i;
  if (!pt_obj_drop(off, gen)) return;
  for (i = q->get.index; i != q->put.index; i++) {          /* nobody else can see it now */
    qslot *s = &q->slots[i % q->cap];
    discard(slot_data(s), (size_t)s->len);
    if (s->len > PT_QUEUE_INLINE) pt_shm_free(s->u.block);
  }
  pthread_mutex_destroy(&q->put.mu);
  pthread_mutex_destroy(&q->get.mu);
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

/* Holding the put end: put m into the free slot at the tail. */
static void put_slot(queue *q, pt_qmsg *m) {
  qslot *s = &q->slots[q->put.index % q->cap];
  s->len = m->len;
  if (m->block) s->u.block = m->block;
  else if (m->len) memcpy(s->u.inl, m->data, m->len);
  pt_cond_wake(&q->put.waiters);
  __atomic_store_n(&q->put.index, q->put.index + 1, __ATOMIC_RELEASE);
  m->block = 0;                                /* the queue's now */
}

/* Holding the get end: take the message at the head into m. */
static void get_slot(queue *q, pt_qmsg *m) {
  qslot *s = &q->slots[q->get.index % q->cap];
  m->len = (size_t)s->len;
  if (s->len > PT_QUEUE_INLINE) {
    m->block = s->u.block;
    m->data = PT_SHM_PTR(char, m->block);
  } else {
    if (m->len) memcpy(m->inl, s->u.inl, m->len);
    m->block = 0;
    m->data = m->inl;
  }
  pt_cond_wake(&q->get.waiters);
  __atomic_store_n(&q->get.index, q->get.index + 1, __ATOMIC_RELEASE);
}

/* 1 when the end `me` may move: its index is not `bias` past the other's
   (put: bias = cap, full; get: 0, empty).  Reads the other end's index
   only when the copy in me->seen says no. */
static int can_move(qend *me, qend *other, uint64_t bias) {
  if (me->index != me->seen + bias) return 1;
  me->seen = LOAD(other->index);
  return me->index != me->seen + bias;
}

/* Holding me, which cannot move until the other end's index leaves
   me->seen: wait for that, and hold me again on return.  The first call of
   a put or get spins a little with nothing held (the other side is often
   about to act); later calls sleep on the other end, under its lock. */
static int await(queue *q, qend *me, qend *other, int *spun, double deadline,
                 const pt_wake *w) {
  uint64_t seen = me->seen;
  int r = PT_OK;
  pt_unlock(&me->mu);
  if (!*spun && pt_spin_useful()) pt_spin_while(&other->index, seen);
  else if (pt_lock(&other->mu, pt_shm_recovered, NULL) == PT_ERR) r = PT_ERR;
  else {
    if (LOAD(other->index) == seen && !LOAD(q->closed))
      r = pt_cond_wait_on(&other->waiters, &other->mu, deadline, w, pt_shm_recovered, NULL);
    pt_unlock(&other->mu);
  }
  *spun = 1;
  if (pt_lock(&me->mu, pt_shm_recovered, NULL) == PT_ERR) abort();   /* see pt_cond_wait_on */
  return r;
}

int pt_queue_put(pt_off off, pt_qmsg *m, double deadline, const pt_wake *w) {
  queue *q = Q(off);
  int r, spun = 0;
  if (m->len > PT_QUEUE_INLINE && !m->block) {  /* fill it before locking */
    m->block = pt_shm_alloc(m->len);
    if (!m->block) return PT_NOMEM;
    memcpy(PT_SHM_PTR(char, m->block), m->data, m->len);
  }
  if (pt_lock(&q->put.mu, pt_shm_recovered, NULL) == PT_ERR) return PT_ERR;
  for (;;) {
    if (LOAD(q->closed)) { r = PT_CLOSED; break; }
    if (can_move(&q->put, &q->get, q->cap)) { put_slot(q, m); r = PT_OK; break; }
    if (expired(deadline)) { r = PT_TIMEOUT; break; }
    if ((r = await(q, &q->put, &q->get, &spun, deadline, w)) != PT_OK) break;
  }
  pt_unlock(&q->put.mu);
  return r;
}

int pt_queue_get(pt_off off, pt_qmsg *m, double deadline, const pt_wake *w) {
  queue *q = Q(off);
  int r, spun = 0;
  m->block = 0;
  if (pt_lock(&q->get.mu, pt_shm_recovered, NULL) == PT_ERR) return PT_ERR;
  for (;;) {
    uint32_t closed = LOAD(q->closed);         /* before the look at the tail */
    if (can_move(&q->get, &q->put, 0)) { get_slot(q, m); r = PT_OK; break; }
    if (closed) { r = PT_CLOSED; break; }
    if (expired(deadline)) { r = PT_TIMEOUT; break; }
    if ((r = await(q, &q->get, &q->put, &spun, deadline, w)) != PT_OK) break;
  }
  pt_unlock(&q->get.mu);
  return r;
}

/* Both ends held (put, then get: nobody else holds both): every waiter
   wakes before the closed flag is stored. */
void pt_queue_close(pt_off off) {
  queue *q = Q(off);
  if (pt_lock(&q->put.mu, pt_shm_recovered, NULL) == PT_ERR) return;
  if (pt_lock(&q->get.mu, pt_shm_recovered, NULL) != PT_ERR) {
    pt_cond_wake(&q->put.waiters);
    pt_cond_wake(&q->get.waiters);
    __atomic_store_n(&q->closed, 1, __ATOMIC_RELEASE);
    pt_unlock(&q->get.mu);
  }
  pt_unlock(&q->put.mu);
}

uint32_t pt_queue_count(pt_off off) {
  queue *q = Q(off);
  uint64_t head = LOAD(q->get.index), n = LOAD(q->put.index) - head;
  return n > q->cap ? q->cap : (uint32_t)n;
}

uint32_t pt_queue_capacity(pt_off off) { return Q(off)->cap; }

/* Receivers sleep on the put end (put_slot and close wake its waiters
   before publishing): so does a watcher, under the put end's lock. */
int pt_queue_watch(pt_off off, const uint32_t **word, uint32_t *value) {
  queue *q = Q(off);
  int ready;
  if (pt_queue_count(off) || LOAD(q->closed)) return 1;
  if (pt_lock(&q->put.mu, pt_shm_recovered, NULL) == PT_ERR) return 1;   /* the get will say why */
  ready = LOAD(q->put.index) != LOAD(q->get.index) || LOAD(q->closed);
  if (!ready) {                 /* as pt_cond_wait_on does, without the sleep */
    __atomic_store_n(&q->put.waiters.sleeping, 1, __ATOMIC_RELAXED);
    *value = __atomic_load_n(&q->put.waiters.seq, __ATOMIC_RELAXED);
    *word = &q->put.waiters.seq;
  }
  pt_unlock(&q->put.mu);
  return ready;
}
