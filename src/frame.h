/* frame.h - the frames of a message pipe (plain C, no lua_State).
 *
 * A message travels as one or more chunks.  A chunk is at most PIPE_BUF
 * (4096) bytes and is written with one write(), which the OS makes atomic:
 * the byte stream of a pipe is therefore always a sequence of whole chunks,
 * whatever happens to the writers.  A chunk is a 16-byte header and up to
 * 4080 bytes of data:
 *
 *   0  u32  magic "PTM1"
 *   4  u8   kind: 1 data, 2 abort (the message being sent was torn)
 *   5  u8   flags: 1 first chunk of a message, 2 last chunk
 *   6  u16  data bytes in this chunk (4080 in every chunk but the last)
 *   8  u32  first chunk: the message length; later chunks: their offset
 *  12  u32  check of bytes 0..11
 *
 * (little endian).  One exception to the size: a message whose frame fits
 * two pages (PT_FRAME_ONEMAX data bytes) may travel as one chunk, first and
 * last, of more than PIPE_BUF bytes, when the writer knows the pipe has
 * room for it all (then the write does not block, so it cannot be cut).
 *
 * A side chunk (kind 3, first and last, 4080 data bytes: one PIPE_BUF
 * write) is a whole message of a little more than 4080 bytes whose last
 * bytes (at most PT_SIDE_MAX) wait in a side slot of the pipe's shared
 * mapping (pipe.h); its bytes 8..11 are the slot's tag, not a length.  A
 * 4096-byte string (4099 encoded bytes) then takes one page of the pipe,
 * not the page and a half of a 4115-byte write (the kernel merges only a
 * write's first len % 4096 bytes into the page before).
 * Writers hold a lock for a whole message, so the chunks
 * of one message are contiguous; a writer that dies mid-message leaves a
 * message without its last chunk, which the reader notices (an abort
 * chunk, a new first chunk, or the end of the stream) and reports as lost.
 */
#ifndef PT_FRAME_H
#define PT_FRAME_H

#include <stddef.h>
#include <stdint.h>
#include "buf.h"

#define PT_FRAME_HDR 16
#define PT_FRAME_CHUNK 4096                        /* PIPE_BUF on Linux */
#define PT_FRAME_MAXDATA (PT_FRAME_CHUNK - PT_FRAME_HDR)
#define PT_FRAME_ONEMAX (2 * PT_FRAME_CHUNK - PT_FRAME_HDR) /* a one-chunk message */
#define PT_MSG_MAX (64u * 1024u * 1024u)           /* encoded bytes */

#define PT_FRAME_DATA 1
#define PT_FRAME_ABORT 2
#define PT_FRAME_SIDE 3                            /* see above */
#define PT_SIDE_MAX 56                             /* bytes in a side slot */
#define PT_FRAME_FIRST 1
#define PT_FRAME_LAST 2

typedef struct pt_frame_hdr {
  int kind, flags;
  uint32_t len, total;
} pt_frame_hdr;

/* Write a header into out[16]. */
void pt_frame_put(unsigned char *out, int kind, int flags, uint32_t len,
                  uint32_t total);
/* Parse and check the 16 bytes at p.  1 valid, 0 not a header. */
int pt_frame_get(const unsigned char *p, pt_frame_hdr *h);

/* Could the n < 16 bytes at p begin a valid header?  (Checks what n
   bytes allow: a reader waits for more only while this holds.) */
int pt_frame_prefix(const unsigned char *p, size_t n);

/* Reassembly of messages from chunks, one reader at a time. */
typedef struct pt_frame_asm {
  pt_buf msg;          /* the message being assembled */
  uint32_t total;      /* its length */
  int active;          /* a first chunk was seen, the last not yet */
  int orphan;          /* skipping continuation chunks of a lost message */
  const char *out;     /* PT_FR_MSG: the message (into msg or the input) */
  size_t outlen;
  int side;            /* PT_FR_MSG of a side chunk: out is the message
                          but its last bytes, in the slot tagged side_tag */
  uint32_t side_tag;
} pt_frame_asm;

enum {
  PT_FR_NEED = 0,      /* not a whole chunk yet: read more */
  PT_FR_MORE,          /* a chunk was consumed; go on */
  PT_FR_MSG,           /* a message is complete: out, outlen */
  PT_FR_LOST,          /* a torn message was dropped (say so once) */
  PT_FR_CORRUPT,       /* the bytes are not a chunk, or out of sequence */
  PT_FR_NOMEM
};

void pt_frame_asm_init(pt_frame_asm *a);
void pt_frame_asm_reset(pt_frame_asm *a);   /* drop a partial message */
void pt_frame_asm_free(pt_frame_asm *a);
/* Look at the n bytes at p, which start at a chunk boundary.  *used is
   how many bytes were consumed (0 for NEED, CORRUPT, and for a LOST that
   leaves a new first chunk to be read again).  Fewer than 16 bytes that
   cannot begin a header are CORRUPT at once, never NEED. */
int pt_frame_step(pt_frame_asm *a, const char *p, size_t n, size_t *used);
/* Offset of the first valid header in p[0..n) at or after 1, or n when
   there is none that could start a header (a resync after garbage). */
size_t pt_frame_scan(const char *p, size_t n);

#endif
