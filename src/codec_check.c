/* codec_check.c - the walker: check a buffer, or drop the references it
 * holds (see codec.h for the format).
 *
 * One pass over the values, as the decoder will read them: every tag,
 * length, id and upvalue link is checked, every keyed check (bytecode,
 * names, references) compared, and each object gets its id in
 * the same order (kinds[id]: 0 a table, 1 + upvalue count a function), so
 * that nothing the decoder then does can fail on damaged bytes.  With
 * `from` set, each reference at or after it is released on the way (a
 * buffer that will never be decoded; a damaged or cut one releases the
 * whole references before the damage). */
#include "codec.h"

typedef struct walker {
  rd r;
  const char *from;      /* release references at or after this; NULL: none */
  pt_buf kinds;
  int nrefs;             /* references met */
  int oom;               /* kinds could not grow */
  double num;            /* the last double read */
} walker;

#define K_TABLE 0

static int walk_new_id(walker *w, int kind) {
  unsigned char k = (unsigned char)kind;
  if (pt_buf_add(&w->kinds, &k, 1) == 0) return 1;
  w->oom = 1;
  return 0;
}

/* The kind of object `id` names: K_TABLE, 1 + nups, or -1 if none yet. */
static int walk_id_kind(const walker *w, uint64_t id) {
  if (id == 0 || id > w->kinds.len) return -1;
  return (unsigned char)w->kinds.data[id - 1];
}

static int walk(walker *w, int depth);

static int walk_table(walker *w, int depth) {
  rd *r = &w->r;
  int flags = rd_byte(r);
  if (flags < 0 || (flags & ~1) || !walk_new_id(w, K_TABLE)) return 0;
  for (;;) {
    int kt;
    if (r->p < r->end && *r->p == T_END) { r->p++; break; }
    kt = walk(w, depth + 1);
    if (!kt || kt == T_NIL || (kt == T_DOUBLE && w->num != w->num)) return 0;
    if (!walk(w, depth + 1)) return 0;
  }
  if (flags & 1) {               /* a metatable: a table, or may be one */
    int mt = walk(w, depth + 1);
    if (mt != T_TABLE && mt != T_GLOBALS && mt != T_MODULE) return 0;
  }
  return T_TABLE;
}

static int walk_function(walker *w, int depth) {
  rd *r = &w->r;
  uint64_t len, chk, v;
  const char *code;
  int i, nups;
  if (!rd_get(r, &len, 8) || !rd_get(r, &chk, 8) || len > (uint64_t)(r->end - r->p))
    return 0;
  code = r->p;
  r->p += len;
  if ((nups = rd_byte(r)) < 0) return 0;
  if (w->from == NULL && pt_codec_code_check(code, (size_t)len, nups) != chk) return 0;
  if (!walk_new_id(w, 1 + nups)) return 0;
  for (i = 0; i < nups; i++) {
    if (r->p < r->end && *r->p == T_JOIN) {
      int k, idx;
      r->p++;
      if (!rd_varint(r, &v) || (idx = rd_byte(r)) < 1) return 0;
#ifndef PT_HAVE_UPVALUEID
      return 0;                  /* this Lua cannot join upvalues */
#endif
      k = walk_id_kind(w, v);
      if (k < 1 || idx > k - 1) return 0;
    } else if (!walk(w, depth + 1)) {
      return 0;
    }
  }
  return T_FUNC;
}

/* Read a u64 check: 1 when it is `want`. */
static int walk_check(walker *w, uint64_t want) {
  uint64_t chk;
  return rd_get(&w->r, &chk, 8) && chk == want;
}

/* 'M' module check, or 'C' module key check: a name someone else spelt
   (even at the same length) does not match. */
static int walk_name(walker *w, int t) {
  size_t mn, kn = 0;
  const char *m = rd_str(&w->r, &mn), *k = NULL;
  if (!m || mn == 0 || (t == T_CFUNC && !(k = rd_str(&w->r, &kn)))) return 0;
  return walk_check(w, pt_codec_name_check(m, mn, k, kn)) ? t : 0;
}

/* A reference is released (discard) only when its check matches too. */
static int walk_xref(walker *w, const char *at) {
  int i = rd_byte(&w->r);
  const pt_xtype *xt = pt_codec_xtype(i);
  pt_ref ref;
  if (!xt || !rd_get(&w->r, &ref, sizeof ref) ||
      !walk_check(w, pt_codec_ref_check(i, &ref)))
    return 0;
  w->nrefs++;
  if (w->from && at >= w->from) xt->release(&ref);
  return T_XREF;
}

/* Walk one value: its tag (T_TABLE for a reference to a table, T_FUNC for
   one to a function), or 0 when the bytes are not a value. */
static int walk(walker *w, int depth) {
  rd *r = &w->r;
  const char *at = r->p;
  int t = rd_byte(r), k;
  uint64_t v;
  size_t n;
  if (t < 0 || depth > PT_CODEC_MAXDEPTH + 1) return 0;
  switch (t) {
    case T_NIL: case T_FALSE: case T_TRUE: case T_GLOBALS: return t;
    case T_INT: { char x[8]; return rd_get(r, x, 8) ? t : 0; }
    case T_DOUBLE: return rd_get(r, &w->num, 8) ? t : 0;
    case T_STRING: return rd_str(r, &n) ? t : 0;
    case T_MODULE: case T_CFUNC: return walk_name(w, t);
    case T_REF:
      if (!rd_varint(r, &v) || (k = walk_id_kind(w, v)) < 0) return 0;
      return k == K_TABLE ? T_TABLE : T_FUNC;
    case T_TABLE: return walk_table(w, depth);
    case T_FUNC: return walk_function(w, depth);
    case T_XREF: return walk_xref(w, at);
    default:
      r->bad = 1;
      return 0;
  }
}

static void walk_init(walker *w, const char *data, size_t len, const char *from) {
  memset(w, 0, sizeof *w);
  w->r.p = data; w->r.end = data + len;
  w->from = from;
  pt_buf_init(&w->kinds);
}

/* Read the ticket at the start of a buffer, if there is one (1), moving
   past it.  0: none; -1: a cut or damaged one. */
static int walk_ticket(rd *r, pt_ticket *t) {
  int kind;
  if (r->p >= r->end || *r->p != T_TICKET) return 0;
  if (r->end - r->p < TICKET_LEN) return -1;
  kind = (unsigned char)r->p[1];
  if (kind != TK_ARENA && kind != TK_LOCAL) return -1;
  t->kind = kind;
  memcpy(&t->where, r->p + 2, 8);
  memcpy(&t->nonce, r->p + 10, 8);
  r->p += TICKET_LEN;
  return 1;
}

/* Walk values from w's position to the end: 1 when all are whole. */
static int walk_all(walker *w) {
  while (w->r.p < w->r.end)
    if (!walk(w, 0)) return 0;
  return 1;
}

/* Safe on any bytes, a cut message included: takes the ticket (nothing is
   done when it was taken before) and releases every whole reference up
   to the first damage, never reading out of bounds. */
void pt_discard(const char *data, size_t len) {
  walker w;
  pt_ticket t;
  walk_init(&w, data, len, data);
  if (walk_ticket(&w.r, &t) == 1 && pt_codec_ticket_take(&t) != 1) return;
  (void)walk_all(&w);
  pt_buf_free(&w.kinds);
}

void pt_codec_release_from(const char *data, size_t len, const char *from) {
  walker w;
  pt_ticket t;
  walk_init(&w, data, len, from);
  if (walk_ticket(&w.r, &t) >= 0) (void)walk_all(&w);
  pt_buf_free(&w.kinds);
}

const char *pt_codec_check_message(const char *data, size_t len, int *has_ticket,
                                   pt_ticket *t) {
  walker w;
  int ok;
  walk_init(&w, data, len, NULL);
  *has_ticket = walk_ticket(&w.r, t);
  ok = *has_ticket >= 0 && walk_all(&w) && (w.nrefs == 0 || *has_ticket == 1);
  pt_buf_free(&w.kinds);
  return ok ? NULL : w.oom ? CODEC_OOM : "corrupt message";
}
