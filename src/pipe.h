/* pipe.h - the insides of a message pipe, shared by its files (not an API).
 *
 * A pipe is an OS pipe plus a small shared mapping (MAP_SHARED, inherited
 * by forked children) that holds two robust process-shared locks and the
 * read-ahead buffer:
 *
 *  - the write lock is held for a whole message, so the chunks of
 *    concurrent senders (threads and processes) never interleave.  Every
 *    chunk is one write() of at most PIPE_BUF bytes, which the OS makes
 *    atomic, so a sender killed mid-message leaves whole chunks only: the
 *    next locker gets EOWNERDEAD and writes an abort chunk, and the reader
 *    drops the torn message and says "lost message".
 *  - the read lock is held while a reader takes one message out of the
 *    shared buffer (reading more from the OS pipe as needed, up to 64 KiB
 *    at a time; only to the end of the frame once p:fds() was asked, so
 *    that a poll of the read fd sees every message), so readers in
 *    several threads and processes each get whole messages.
 *  - a sender that finds the pipe too full grows it (256 KiB), and one
 *    whose frame of two pages does not fit waits a little for a reader to
 *    make room (rseq, wsleep) rather than cut it into chunks.
 *  - side slots: a message of a little more than one chunk holds (4081 to
 *    4080 + PT_SIDE_MAX encoded bytes: a 4096-byte string is 4099) goes
 *    as one PIPE_BUF chunk of its first 4080 bytes (a side chunk,
 *    frame.h), its last bytes in the slot of the chunk's tag.  Senders tag
 *    side chunks 1, 2, 3, ... (wside, under wlock: the pipe holds them in
 *    tag order) and fill a slot only once its last tag was taken out or
 *    passed (rside: the last side tag a reader took, under rlock); else
 *    the message goes the usual way.  A slot filled by a sender that died
 *    before its write is passed by the next side chunk taken.
 *
 * In each process, a pipe is one malloc'd pt_pipe shared by the threads
 * (reference counted: Lua handles plus references in flight inside encoded
 * messages), listed in a per-process registry by a unique id so that a
 * pipe can cross the codec.  A forked child inherits the registry and the
 * handles by copy-on-write, without counts: a handle only drops its count
 * in the process that made it.
 *
 * The files, each using only those above it in this list:
 *   pipe_read.c   the shared locks; taking messages out (the reader's
 *                 frame state machine, read-ahead, parking, draining)
 *   pipe_end.c    an end in use: close() waits for the calls using it
 *   pipe_write.c  sending a message (chunks, batches, SIGPIPE, room)
 *   pipe.c        the registry, handles, the Lua binding, the codec's
 *                 by-reference crossing, pt.select's hooks */
#ifndef PT_PIPE_H
#define PT_PIPE_H

#include "pt.h"
#include "frame.h"

#include <pthread.h>
#include <stdint.h>
#include <sys/types.h>

#define PT_PIPE_RBUF (64 * 1024)

/* The fields come in groups each on cache lines of its own: what senders
   write, what readers write, and the read-ahead buffer.  Each side then
   takes the other's line only for the one count it reads, not on every
   store of its own (a shared line cost each side a cache miss on every
   message of a stream). */
#define PT_PIPE_LINE 64
#define PT_SIDE_SLOTS 256           /* more than side chunks fit the pipe */
typedef struct pt_pipe_side {
  uint32_t tag;               /* the side chunk these bytes end (0: none) */
  uint32_t n;                 /* how many: at most PT_SIDE_MAX */
  char b[PT_SIDE_MAX];
} __attribute__((aligned(PT_PIPE_LINE))) pt_pipe_side;

typedef struct pipe_shm {
  /* ---- written by senders (under wlock, but the lock itself) ---- */
  pthread_mutex_t wlock;      /* held by a sender for a whole message */
  int wtorn;                  /* a sender stopped mid-message (written under
                                 wlock, read by a reader waiting mid-message) */
  uint32_t wseq;              /* takings of wlock (under wlock) */
  uint64_t wholder;           /* wlock's holder: wseq << 32 | pid, 0 free */
  /* Byte counts, so that neither side needs a system call to know what
     the pipe holds: writers add to wbytes before a write (under wlock)
     and to wdone after it, readers to rbytes after a read (under rlock).
     wbytes - rbytes is then at least what the pipe holds (a kill between
     a count and its syscall only makes it larger), and wdone != rbytes
     when a reader may find bytes (it checks without waiting). */
  uint64_t wbytes, wdone;
  uint32_t wsleep;            /* a sender waits for room for a whole frame
                                 (set and cleared under wlock) */
  uint64_t wstale;            /* 1 + rbytes when such a wait last timed
                                 out (0: never): none again until a reader
                                 reads (under wlock) */
  int wnofit;                 /* such waits are off for this pipe (wlock) */
  int capacity;               /* the OS pipe's size in bytes (under wlock) */
  int grown;                  /* a sender tried to enlarge it (under wlock) */
  uint32_t wside;             /* the last side chunk's tag (under wlock) */
  /* ---- written by readers (under rlock, but the lock itself) ---- */
  pthread_mutex_t rlock __attribute__((aligned(PT_PIPE_LINE)));
                              /* held by a receiver for a whole message */
  uint32_t rstart, rend;      /* unread bytes of rbuf (under rlock) */
  uint64_t rbytes;
  uint32_t rseq;              /* futex word: readers bump it after a read
                                 while wsleep is set */
  int resync;                 /* skip to the next valid header (under rlock) */
  int orphan;                 /* the rest of a message a reader left is being
                                 skipped and was reported lost */
  int exact;                  /* p:fds() was asked, in some process: reads
                                 take no byte past the frame they complete,
                                 so the read fd is readable while a message
                                 waits (for poll loops) */
  uint64_t parked;            /* a reader that timed out mid-message keeps
                                 the part it took (see park); its id, or 0
                                 (under rlock) */
  uint32_t rside;             /* the last side tag taken out (under rlock) */
  char rbuf[PT_PIPE_RBUF] __attribute__((aligned(PT_PIPE_LINE)));
  /* ---- the side slots (see the top): one line each ---- */
  pt_pipe_side side[PT_SIDE_SLOTS];
} pipe_shm;

typedef struct pt_pipe {
  pthread_mutex_t mu;         /* the fields below */
  long refs;                  /* handles + in-flight references */
  long inflight;              /* references held by encoded messages */
  int rfd, wfd;               /* -1 once closed in this process */
  int rbusy, wbusy;           /* calls using rfd / wfd right now */
  int rclosing, wclosing;     /* close asked while busy: the last call closes */
  int close_ev;               /* eventfd written when rclosing is set (a
                                 sender holding the read end waits on it),
                                 made on first need, or -1 */
  uint64_t id;
  pid_t born;                 /* the process that made the pipe */
  unsigned forks;             /* fork count when it was made */
  pt_buf park;                /* the part of a message a recv of this process
                                 took before it timed out (under rlock) */
  uint32_t park_total;        /* that message's length */
  uint64_t park_id;           /* the id it was parked under */
  pipe_shm *shm;
  struct pt_pipe *prev, *next; /* the registry */
} pt_pipe;

/* ---- pipe_read.c ---------------------------------------------------------- */

enum { LK_OK = 0, LK_DIED = 1, LK_ERR = -1, LK_CANCEL = -2, LK_TIMEOUT = -3 };
/* Take a shared lock of the pipe before deadline (< 0: none), staying
   cancellable and (main thread) interruptible: LK_*. */
int pt_pipe_lock(pthread_mutex_t *m, double deadline);

enum { R_MSG = 0, R_CLOSED, R_TIMEOUT, R_LOST, R_CORRUPT, R_CANCEL, R_ERR, R_NOMEM };
/* Take one message out of the read fd (rlock held).  On R_MSG, out holds
   it.  may_park: a timeout or cancellation mid-message parks the part
   taken, for the next recv of this process. */
int pt_pipe_take(pt_pipe *p, int fd, double deadline, pt_buf *out, int may_park);
/* Drop every whole message left in the pipe, with the references it
   holds, without waiting (the last reader closes). */
void pt_pipe_drain(pt_pipe *p, int fd);
/* From now on, in every process, read no byte past the frame being
   completed (p:fds(): see pipe_shm.exact). */
void pt_pipe_exact(pt_pipe *p);

/* ---- pipe_end.c ----------------------------------------------------------- */

void pt_pipe_close_fd(int *fd);           /* close it unless -1; set -1 */
unsigned pt_pipe_forks(void);             /* forks this process made */
pid_t pt_pipe_pid(void);                  /* getpid(), without a system call */
/* The read end closes for good in this process (fd taken out of p). */
void pt_pipe_finish_read_close(pt_pipe *p, int fd);
/* Start a call on the read (r=1) or write end; -1 when that end is closed. */
int pt_pipe_end_begin(pt_pipe *p, int r);
void pt_pipe_end_done(pt_pipe *p, int r);
/* A send: the write end (-1 when closed, or no reader is left); then,
   holding the write lock, the read end too when this process holds it
   open: 1, 0 when it does not, -1 when no reader is left. */
int pt_pipe_send_begin(pt_pipe *p);
int pt_pipe_send_reader(pt_pipe *p);
void pt_pipe_send_done(pt_pipe *p, int reader);
void pt_pipe_end_close(pt_pipe *p, int r);
/* For a sender holding the read end busy: -2 when a close of it has been
   asked, else the eventfd pt_pipe_end_close writes, or -1. */
int pt_pipe_close_event(pt_pipe *p);
void pt_pipe_watch_forks(void);           /* once, at registration */

/* ---- pipe_write.c --------------------------------------------------------- */

enum { WR_OK = 0, WR_CLOSED = 1, WR_ERR = -1, WR_CANCEL = -2, WR_LOCK = -3 };
/* Send the message b->data[16 .. b->len) followed by tail[0 .. tlen)
   (b->data[0..16) is room for a header; the tail, when the message goes
   in one write, is written from where it is, else it joins b first):
   WR_OK, WR_CLOSED (no reader, or the write end closed), WR_CANCEL
   (cancelled or interrupted), WR_ERR or WR_LOCK (the write lock failed;
   errno says why). */
int pt_pipe_write(pt_pipe *p, pt_buf *b, const char *tail, size_t tlen);

#endif
