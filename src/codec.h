/* codec.h - what the files of the codec share (private to codec*.c).
 *
 * The codec carries Lua values between Lua states as bytes.  Its files,
 * each using only those below it:
 *
 *   codec.c        pt.encode / pt.decode / pt.discard, pt_open_codec
 *   codec_enc.c    the encoder (and the name map of C functions and
 *                  modules it writes by name)
 *   codec_dec.c    the decoder
 *   codec_check.c  the reader's walker: checks a whole buffer before the
 *                  decoder makes anything, and drops the references of a
 *                  buffer that will never be decoded
 *   codec_ref.c    the process tree's key (bytecode check, ticket nonces),
 *                  the registry of types that cross by reference, tickets
 *
 * The format is a sequence of values, each a tag byte and its payload:
 *
 *   'n' nil   'f' false   't' true   'G' the receiver's globals
 *   'i' int64 (5.3+)       'd' double
 *   's' varint length, bytes
 *   'T' flags, pairs of values..., 'e'  [metatable value if flags&1]
 *   'R' varint id          (a table or function seen before)
 *   'F' u64 length, u64 check, bytecode, u8 nups, upvalue slots
 *       (an upvalue slot is a value, or 'J' varint fid, u8 idx: shared
 *       with upvalue idx of function fid)
 *   'C' string module, string key, u64 check   (a C function by name)
 *   'M' string module, u64 check                (a table of package.loaded)
 *   'X' u8 type, 16-byte reference, u64 check   (a registered type: shared
 *       table, array, pipe; the type is its registration index, see
 *       pt_codec_register)
 *   'K' u8 kind, u64 where, u64 nonce (the ticket: first, and only in a
 *       message holding references; see codec_ref.c)
 *
 * Tables and functions get ids in the order they are first met, on both
 * sides, which preserves shared parts and cycles.  The decoder checks
 * every tag and length and never reads past the end.  Everything that
 * makes the decoder run or load something carries a check keyed by the
 * process tree's key (a FNV-1a over the bytes, started from the key, mixed
 * with it at the end): bytecode and its upvalue count (so random bytes
 * never reach the Lua loader), a module's name (require), a C function's
 * module and key, a reference (it adopts a count).  So damaged bytes never
 * name another module or object than the sender's, even at the same length.  Nesting is
 * bounded (PT_CODEC_MAXDEPTH).  The decoder checks the whole buffer
 * (structure, tags, lengths, ids, the ticket) before it makes anything
 * or loads any module, and looks names up with raw accesses only. */
#ifndef PT_CODEC_H
#define PT_CODEC_H

#include "pt.h"

#include <stdint.h>
#include <string.h>
#ifdef PT_DEBUG
#include <stdio.h>
#include <stdlib.h>
#endif

#define T_NIL 'n'
#define T_FALSE 'f'
#define T_TRUE 't'
#define T_GLOBALS 'G'
#define T_INT 'i'
#define T_DOUBLE 'd'
#define T_STRING 's'
#define T_TABLE 'T'
#define T_END 'e'
#define T_REF 'R'
#define T_FUNC 'F'
#define T_JOIN 'J'
#define T_CFUNC 'C'
#define T_MODULE 'M'
#define T_XREF 'X'
#define T_TICKET 'K'
#define TICKET_LEN 18

#define CODEC_OOM "out of memory"      /* every failed allocation says this */

/* ---- stack discipline (Lanes' STACK_CHECK) --------------------------------
 * STACK_OPEN(L) notes the top at a function's entry; STACK_CHECK(L, d)
 * says the top is now d slots above it.  Checked (abort with the place)
 * in builds with PT_DEBUG; nothing otherwise. */
#ifdef PT_DEBUG
static inline void codec_stack_check(lua_State *L, int want, const char *file,
                                     int line) {
  if (lua_gettop(L) == want) return;
  fprintf(stderr, "%s:%d: Lua stack top is %d, expected %d\n", file, line,
          lua_gettop(L), want);
  abort();
}
#define STACK_OPEN(L) const int stack_base_ = lua_gettop(L)
#define STACK_CHECK(L, d) codec_stack_check((L), stack_base_ + (d), __FILE__, __LINE__)
#else
#define STACK_OPEN(L) ((void)0)
#define STACK_CHECK(L, d) ((void)0)
#endif

/* ---- codec_ref.c ----------------------------------------------------------- */

/* Make the process tree's key (once; before any fork, so every process of
   the tree shares it) and register the ticket set's fork handler. */
void pt_codec_ref_open(void);
void pt_codec_key_init(void);           /* the key alone, once */
extern uint64_t pt_codec_key;           /* odd; set once by pt_codec_key_init */

/* The keyed check: FNV-1a over the bytes, started from the key and a tag
   (which part of the format it covers), then mixed with the key.  Inline:
   the encoder and the walker run it over every function's bytes. */
static inline uint64_t pt_codec_ck_bytes(uint64_t h, const void *p, size_t n) {
  const unsigned char *s = (const unsigned char *)p;
  size_t i;
  for (i = 0; i < n; i++) {
    h ^= s[i];
    h *= 0x100000001b3ull;
  }
  return h;
}

static inline uint64_t pt_codec_ck_byte(uint64_t h, int c) {
  unsigned char b = (unsigned char)c;
  return pt_codec_ck_bytes(h, &b, 1);
}

static inline uint64_t pt_codec_ck_start(int tag) {
  return pt_codec_ck_byte(0xcbf29ce484222325ull ^ pt_codec_key, tag);
}

/* Length, then bytes: the parts of a check over two names cannot shift. */
static inline uint64_t pt_codec_ck_str(uint64_t h, const char *p, size_t n) {
  uint64_t len = n;
  return pt_codec_ck_bytes(pt_codec_ck_bytes(h, &len, 8), p, n);
}

static inline uint64_t pt_codec_ck_end(uint64_t h) {
  h ^= h >> 29; h *= pt_codec_key; h ^= h >> 32;
  return h;
}

/* The check of n bytes of bytecode and an upvalue count. */
static inline uint64_t pt_codec_code_check(const char *p, size_t n, int nups) {
  uint64_t h = pt_codec_ck_bytes(pt_codec_ck_start(T_FUNC), p, n);
  return pt_codec_ck_end(pt_codec_ck_byte(h, nups));
}

/* The check of a name: 'M' module (k NULL), or 'C' module and key. */
static inline uint64_t pt_codec_name_check(const char *m, size_t mn, const char *k,
                                           size_t kn) {
  uint64_t h = pt_codec_ck_str(pt_codec_ck_start(k ? T_CFUNC : T_MODULE), m, mn);
  return pt_codec_ck_end(k ? pt_codec_ck_str(h, k, kn) : h);
}

/* The check of a reference: its type index and its 16 bytes. */
static inline uint64_t pt_codec_ref_check(int type, const pt_ref *ref) {
  uint64_t h = pt_codec_ck_byte(pt_codec_ck_start(T_XREF), type);
  return pt_codec_ck_end(pt_codec_ck_bytes(h, ref, sizeof *ref));
}

/* The registered type with index i, or NULL when there is none. */
const pt_xtype *pt_codec_xtype(int i);
int pt_codec_ntypes(void);

enum { TK_ARENA = 0, TK_LOCAL = 1 };
typedef struct pt_ticket {
  int kind;
  uint64_t where, nonce;
} pt_ticket;

/* Make a ticket into out[TICKET_LEN].  0 ok, -1 (the arena is full or out
   of memory). */
int pt_codec_ticket_make(char *out);
/* Take the ticket: 1 taken (the references are ours), 0 taken before
   (already decoded or discarded), -1 it cannot be checked here. */
int pt_codec_ticket_take(const pt_ticket *t);

/* ---- codec_check.c ---------------------------------------------------------- */

/* Check the whole buffer before anything is made: NULL when it is whole,
   else the message ("corrupt message", out of memory).  *has_ticket: 1
   it starts with a ticket (in *t), 0 none. */
const char *pt_codec_check_message(const char *data, size_t len, int *has_ticket,
                                   pt_ticket *t);
/* Release the references of data from `from` on (those not adopted). */
void pt_codec_release_from(const char *data, size_t len, const char *from);

/* ---- the reader shared by the walker and the decoder --------------------- */

typedef struct rd {
  const char *p, *end;
  int bad;
} rd;

static inline int rd_get(rd *r, void *dst, size_t n) {
  if ((size_t)(r->end - r->p) < n) { r->bad = 1; return 0; }
  memcpy(dst, r->p, n);
  r->p += n;
  return 1;
}

static inline int rd_byte(rd *r) {
  unsigned char c;
  return rd_get(r, &c, 1) ? c : -1;
}

static inline int rd_varint(rd *r, uint64_t *v) {
  uint64_t x = 0;
  int shift = 0;
  for (;;) {
    int c = rd_byte(r);
    if (c < 0 || shift > 63) { r->bad = 1; return 0; }
    x |= (uint64_t)(c & 0x7f) << shift;
    if (!(c & 0x80)) break;
    shift += 7;
  }
  *v = x;
  return 1;
}

static inline const char *rd_str(rd *r, size_t *n) {
  uint64_t len;
  const char *s;
  if (!rd_varint(r, &len) || len > (uint64_t)(r->end - r->p)) {
    r->bad = 1;
    return NULL;
  }
  s = r->p;
  r->p += len;
  *n = (size_t)len;
  return s;
}

#endif
