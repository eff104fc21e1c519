/* pt.h - what the C files of procthread share.  Symbols carry the pt_
 * prefix and the concern: pt_buf_*, pt_codec_*, pt_shm_*, pt_pipe_*.  */
#ifndef PT_H
#define PT_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include "compat.h"
#include "lock.h"       /* pt_mutex_reset */
#include "buf.h"        /* pt_buf: plain C, usable without this header */

#define PT_VERSION "0.1.0"

/* Built with ThreadSanitizer: raw system calls and steered signals are
   left out where its interceptors must see the call (sys.c, cancel.c). */
#if defined(__SANITIZE_THREAD__)
#define PT_UNDER_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define PT_UNDER_TSAN 1
#endif
#endif
#define PT_ERRLEN 640          /* an error message buffer (char err[PT_ERRLEN]) */

/* ---- sys.c: errors, clock; cancel.c: cancellation, blocking waits ---- */

/* Push nil, "<op>: <strerror(err)>", err; return 3.  Save errno first. */
int pt_push_oserror(lua_State *L, const char *op, int err);
/* Raise "<op>: <strerror(err)>" as a Lua error. */
int pt_raise_oserror(lua_State *L, const char *op, int err);

/* The one clock of every timeout: wait.c's pt_clock_now (CLOCK_MONOTONIC
   seconds). */
double pt_clock_now(void);

/* Who runs this code.  main: the first Lua state of a process (and every
   state that is not a procthread worker); thread / process: a worker. */
enum { PT_MAIN = 0, PT_THREAD = 1, PT_PROCESS = 2 };
typedef struct pt_ctx {
  int kind;
  volatile int *cancel;     /* set to 1 when cancellation is asked, or NULL */
  int cancel_fd;            /* eventfd that becomes readable on cancel, or -1 */
  lua_State *volatile L;    /* thread: its Lua state while fn runs, or NULL */
  int closing;              /* thread: its Lua state is being closed */
} pt_ctx;
#ifndef PT_TLS                 /* thread-local, initial-exec: see arena.h */
#define PT_TLS __thread __attribute__((tls_model("initial-exec")))
#endif
extern PT_TLS pt_ctx *pt_self_ctx;

int pt_cancel_requested(void);
/* Wait until fd is ready for `events` (POLLIN/POLLOUT) or `timeout` seconds
   pass (<0: forever).  Returns 1 ready, 0 timeout, -1 OS error (errno set),
   -2 this thread was cancelled.  Retries on EINTR. */
int pt_wait_fd(int fd, short events, double timeout);
/* Wait until one of p[0..n) is ready (the caller sets fd and events), or
   the deadline passes (absolute, pt_clock_now(); < 0: forever).  p has room for
   n + 1 entries: the last is this thread's cancel or Ctrl-C eventfd.  Returns the
   index of the first ready entry, -3 timeout, -1 OS error (errno), -2
   cancelled or (main thread) interrupted: see pt_raise_cancelled.  No
   timer: a Ctrl-C that lands just before the sleep still ends it. */
struct pollfd;
int pt_poll_wait(struct pollfd *p, int n, double deadline);
/* Like pt_wait_fd over many fds: returns index of first ready fd, -3 for
   timeout, -1 error, -2 cancelled. */
int pt_wait_fds(const int *fds, int n, short events, double timeout);
/* Raise the cancellation error (the string "cancelled"). */
int pt_raise_cancelled(lua_State *L);
/* thread.c: in a cancelled thread worker, set the hook that raises
   "cancelled" at every instruction, on L and on the thread's own state. */
void pt_cancel_arm(lua_State *L);
/* thread.c: pt.configure{ cancel_signal = sig } (0: none, -1: not a
   number); NULL ok, or why not. */
const char *pt_set_cancel_signal(double sig);
#define PT_CANCELLED_MSG "cancelled"

/* The error object at idx as a string: itself, its __tostring, or
   "(error object is a <type> value)" (which may push one value). */
const char *pt_tomessage(lua_State *L, int idx);
/* Close fd, keeping errno. */
void pt_close(int fd);
/* Code a new child runs between its fork and its exit: every function a
   fork's child handler (pt_atfork_child, pthread_atfork) calls, and what
   it calls, sits together in .text.hot.  A new child maps no page of a
   library's code until it runs there: each 64 KiB window of the kernel's
   fault-around it touches is one page fault (some 4 us here). */
#define PT_AFTER_FORK __attribute__((hot))
/* ---- fork.c: a fork's child, a worker process's exit ------------------ */
/* This process's id, without a system call (kept right across fork()). */
pid_t pt_pid(void);
/* How many forks this process's line has seen (pthread_atfork). */
unsigned pt_fork_generation(void);
/* Called in a new child right after fork(), before any Lua runs there:
   every concern forgets what belongs to the parent.  */
void pt_after_fork_child(void);
/* Register a function pt_after_fork_child must call (at most 16; safe
   to call again with the same function). */
void pt_atfork_child(void (*fn)(void));
/* A forked worker process leaves through pt_child_exit: it runs the
   functions registered here (for example: drop the shared-memory
   references this process took), flushes its own stdio and _exit()s.
   It never runs the parent's atexit handlers. */
void pt_on_child_exit(void (*fn)(void));
void pt_child_exit(int code);
/* fflush(NULL), left out when no stream holds output and no other thread
   can be using them (fork.c) */
void pt_flush_stdio(void);
/* Thread workers of this process still running (atomic). */
extern int pt_live_threads;
/* Waits for pt_live_threads to fall (atomic): a leaving thread wakes the
   word only when there are some (seq_cst both sides). */
extern int pt_live_waiters;
/* pt.fault("nomem_start", n): the next n thread workers of this process
   start as if no memory were left for their Lua state (thread.c). */
void pt_fault_set_starts(int n);

/* ---- codec*.c: values between Lua states ------------------------------
 * One encoder, one decoder.  The byte format is self-describing; the
 * decoder checks every tag and length and never reads out of bounds
 * (codec.h describes it and the codec's files).  */

#define PT_CODEC_MAXDEPTH 200

/* Objects that cross by reference (shared tables, arrays, pipes) register
   one of these.  A reference is 16 bytes.  encode takes whatever count the
   in-flight message must hold and fills ref; release drops it again (the
   message is discarded undecoded); decode pushes the object, adopting that
   count, or returns an error message (the count is then dropped by the
   codec through release). */
typedef struct pt_ref {
  uint64_t a, b;
} pt_ref;

typedef struct pt_xtype {
  const char *tname;                  /* metatable name */
  const char *(*encode)(lua_State *L, int idx, pt_ref *ref);
  void (*release)(const pt_ref *ref);
  const char *(*decode)(lua_State *L, const pt_ref *ref);
} pt_xtype;

/* Defined by table.c, array.c, pipe.c. */
extern const pt_xtype pt_xtype_table, pt_xtype_array, pt_xtype_pipe;
/* Defined by channel.c, sync.c. */
extern const pt_xtype pt_xtype_channel, pt_xtype_semaphore, pt_xtype_event, pt_xtype_barrier;

/* Make a type known to the codec.  The wire format names a type by its
   registration index, so every process registers the same types in the
   same order before any value crosses: core.c does it, once per process.
   Returns the index (the same again for a type registered before), or -1
   when PT_CODEC_MAXTYPES are registered. */
#define PT_CODEC_MAXTYPES 8
int pt_codec_register(const pt_xtype *t);

/* The name a table's metatable (at the top of the stack) refuses copies
   by: its string __nocopy (a pool's, a future's), or NULL.  The codec and
   the shared tables' copy both ask it.  Valid while the metatable holds
   it; the stack is left as it was. */
const char *pt_nocopy_name(lua_State *L);

/* Encode the n values from stack index idx into out (appending).  On
   failure returns 0, leaves out as it was (every reference taken is
   released) and writes "what[2].conn: cannot copy userdata" into err. */
int pt_encode(lua_State *L, int idx, int n, const char *what, pt_buf *out,
              char *err, size_t errlen);
/* The same for a call: a function at idx and n-1 arguments after it,
   named "fn" and "args[i]" in messages.  Encode everything that must
   decode together in one call: ids of shared parts run across it. */
int pt_encode_call(lua_State *L, int idx, int n, pt_buf *out, char *err,
                   size_t errlen);
/* The bytes pt_encode writes before a lone string of n bytes (its tag and
   length, at most PT_STRING_HEAD), written at p: how many.  The string's
   own bytes follow them (a sender may write them from where they are). */
#define PT_STRING_HEAD 11
/* The first byte of a message that holds references (its ticket): such a
   message decodes only from its start, never after other values. */
#define PT_TICKET_TAG 'K'
size_t pt_encode_string_head(char *p, size_t n);
/* Decode every value of a buffer and push them.  Returns how many were
   pushed, or -1 with an error message pushed instead (nothing else). */
int pt_decode(lua_State *L, const char *data, size_t len);
/* The same, but a failure keeps the values decoded whole before it:
   they stay pushed, below the message, and *whole says how many. */
int pt_decode_head(lua_State *L, const char *data, size_t len, int *whole);
/* pt_decode_head, routed: when route[v1] (the table at stack index route,
   raw) is a table with fields into (a table) and at (an integer), the
   values after the first k go to into[at], into[at + 1], ... instead of
   the stack, and *stored says how many (-1: not routed, every value
   pushed).  Values stored before a failure stay stored. */
int pt_decode_into(lua_State *L, const char *data, size_t len, int route, int k,
                   int *stored, int *whole);
/* Drop the references held by an encoded buffer that will never be
   decoded.  Safe on any bytes and on a cut buffer (the start of a
   message: every whole reference in it is released); does nothing for a
   message decoded or discarded before (its ticket is taken). */
void pt_discard(const char *data, size_t len);
/* pt.encode's strings end in a seal (the body's length): pt_seal appends
   it to a message in b (0; -1 when out of memory, the message discarded),
   pt_unseal gives the body's length of a sealed string, or (size_t)-1. */
int pt_seal(pt_buf *b);
size_t pt_unseal(const char *s, size_t n);

/* ---- worker.c, thread.c, process.c (worker.h) -------------------------- */
void pt_open_worker(lua_State *L);   /* adds to the module table at -1 */

/* ---- sys.c: Lua functions ---------------------------------------------- */
void pt_open_sys(lua_State *L);
void pt_open_codec(lua_State *L);

/* ---- shm.c: the arena (plain C, no lua_State) -------------------------- */
/* Map the arena if it is not mapped yet.  0 ok, -1 with errno. */
int pt_shm_ensure(void);

/* ---- table.c, array.c, pipe.c: Lua bindings ---------------------------- */
void pt_open_table(lua_State *L);
/* The arena could not be mapped: push nil, its message, err; return 3. */
int pt_push_shm_error(lua_State *L, int err);
void pt_open_array(lua_State *L);
void pt_open_pipe(lua_State *L);
/* pipe.c, for pt.select: is the value at idx a pipe handle (*pipe: its
   pipe, NULL once closed)?  watch: start watching its read end (the fd,
   or -1 when closed), unwatch when done; buffered: a message is read
   ahead already. */
int pt_pipe_get(lua_State *L, int idx, void **pipe);
int pt_pipe_watch(void *pipe);
void pt_pipe_unwatch(void *pipe);
int pt_pipe_buffered(void *pipe);
void pt_open_select(lua_State *L);    /* select.c */
void pt_open_channel(lua_State *L);   /* channel.c */
void pt_open_sync(lua_State *L);      /* sync.c */
void pt_open_floor(lua_State *L);     /* floor.c: the lab's C floors */

/* core.c: build the module table (used by luaopen and by new thread
   states, which get the module without a file search). */
__attribute__((visibility("default"))) int luaopen_procthread_core(lua_State *L);

/* ---- lifecycle.c: exit, parent death, Ctrl-C (DESIGN.md "Lifecycle") -- */
struct pt_worker;
void pt_open_lifecycle(lua_State *L);
/* A SIGINT came that this thread (the process's main thread) has not yet
   acted on: the blocking call gives up as if cancelled, and
   pt_raise_cancelled then returns nil, "interrupted" instead of raising
   (the interpreter's hook raises "interrupted!" back in Lua). */
int pt_interrupted(void);
int pt_interrupt_pending(void);
int pt_take_interrupt(void);
/* SIGINT is watched and this thread is the one it interrupts: its
   blocking waits must be ones that return on EINTR. */
int pt_interrupt_watched(void);
/* For a futex wait of a thread pt_interrupt_watched says yes to: the word
   the SIGINT handler bumps and wakes, and (*expected) the value it holds
   while no SIGINT is new to this thread.  Check pt_interrupted() first,
   then sleep while the word equals *expected.  NULL: not watched. */
const uint32_t *pt_interrupt_word(uint32_t *expected);
/* cancel.c: the eventfd the poll waits watch for Ctrl-C, made once before
   the handler is installed; and its write, from the handler. */
void pt_interrupt_fd_open(void);
void pt_interrupt_wake(void);
/* cancel.c, from the SIGINT handler with its ucontext: first defer (1:
   this SIGINT is put off, sent again to come later: do nothing now);
   after counting, steer: a main thread in pt_read_interruptible's gap
   is made to return EINTR. */
int pt_interrupt_defer(void *ctx);
void pt_interrupt_steer(void *ctx);
/* cancel.c: for the thread Ctrl-C interrupts (pt_interrupt_watched, no
   cancel fd), a blocking read(fd, buf, n) that a SIGINT ends with EINTR
   however it lands, with no poll before it.  Bytes, -1 (errno), or -2:
   not here (not that thread, no signal for it): poll first instead. */
ssize_t pt_read_interruptible(int fd, void *buf, size_t n);
/* pt.configure{ recv_signal = n }: NULL, or why not. */
const char *pt_set_recv_signal(double n);
/* pt.configure{ _recv_probe = sig } (specs): the next such read sends
   the thread sig from inside the gap, whose handler raises SIGINT. */
const char *pt_set_recv_probe(double sig);
/* The registry of workers not yet ended (each entry holds a reference). */
void pt_lifecycle_add(lua_State *L, struct pt_worker *w);
void pt_lifecycle_remove(struct pt_worker *w);      /* it ended */
void pt_lifecycle_released(struct pt_worker *w);    /* its handle collected */
/* A running thread whose handle is collected: the registry keeps it
   (so it can still be cancelled at exit) until it leaves.  0: not
   registered (it has left). */
int pt_lifecycle_adopt(struct pt_worker *w);
/* pt.detach: the worker leaves the registry (a process: its lifeline
   is disarmed first, so it may outlive us); pt._daemon: marks a pool's
   (helper: one of its own, not a worker, left out of the at-exit count). */
void pt_lifecycle_detach(struct pt_worker *w);
void pt_lifecycle_daemon(struct pt_worker *w, int helper);
void pt_lifecycle_arm(lua_State *L);                /* a handle was made */
/* A process worker's lifeline: prefork before fork() (0, or -1 errno);
   then the child calls pt_lifeline_child first thing, the parent
   pt_lifeline_parent (forked: 1 when fork succeeded). */
int pt_lifeline_prefork(int life[2]);
void pt_lifeline_child(int life[2]);
void pt_lifeline_parent(lua_State *L, struct pt_worker *w, int life[2], int forked);
/* fds kept open for the next spawn: a lifeline (0 or 2) */
int pt_lifeline_spare_fds(void);

#endif
