/* fuzz_frame.c - libFuzzer target for what a pipe reader does with bytes it
 * did not write: the frame parser (chunk headers, reassembly, resync after
 * garbage) and the codec's decoder for every message it yields, plus the
 * decoder on the raw input.  Built by fuzz/run with clang
 * -fsanitize=fuzzer,address,undefined against Lua 5.4 and the sources
 * of src/.
 *
 * The input is fed to the reassembler in pieces whose sizes come from the
 * input itself, as reads of a pipe would deliver it. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "pt.h"
#include "frame.h"

static lua_State *L;

static lua_State *state(void) {
  if (!L) {
    L = luaL_newstate();
    luaL_openlibs(L);
    /* the module's metatables (pipes, shared tables, arrays) */
    lua_getglobal(L, "package");
    lua_getfield(L, -1, "preload");
    lua_pushcfunction(L, luaopen_procthread_core);
    lua_setfield(L, -2, "procthread.core");
    lua_pop(L, 2);
    lua_getglobal(L, "require");
    lua_pushliteral(L, "procthread.core");
    lua_call(L, 1, 0);
    /* messages may name modules: keep require from searching the disk */
    lua_getglobal(L, "package");
    lua_pushliteral(L, "");
    lua_setfield(L, -2, "path");
    lua_pushliteral(L, "");
    lua_setfield(L, -2, "cpath");
    lua_pop(L, 1);
  }
  return L;
}

static int decode(lua_State *S) {
  size_t n;
  const char *p = lua_tolstring(S, 1, &n);
  int r = pt_decode(S, p, n);
  return r < 0 ? 1 : r;
}

/* Decode one message in protected mode (a memory error is not a bug). */
static void try_decode(lua_State *S, const char *p, size_t n) {
  lua_settop(S, 0);
  lua_pushcfunction(S, decode);
  lua_pushlstring(S, p, n);
  (void)lua_pcall(S, 1, LUA_MULTRET, 0);
  lua_settop(S, 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  lua_State *S = state();
  pt_frame_asm a;
  char *buf;
  size_t have = 0, fed = 0, start = 0;
  unsigned step = size ? (unsigned)data[0] % 64 + 1 : 1;
  int resync = 0, msgs = 0;

  try_decode(S, (const char *)data, size);

  buf = malloc(size ? size : 1);
  if (!buf) return 0;
  pt_frame_asm_init(&a);
  while (fed < size || have > start) {
    size_t used = 0;
    int st;
    if (resync && have - start >= PT_FRAME_HDR) {
      pt_frame_hdr h;
      if (!pt_frame_get((const unsigned char *)buf + start, &h)) {
        start += pt_frame_scan(buf + start, have - start);
        continue;
      }
      resync = 0;
    }
    st = resync ? PT_FR_NEED : pt_frame_step(&a, buf + start, have - start, &used);
    start += used;
    if (st == PT_FR_MSG) {
      if (msgs++ < 64) try_decode(S, a.out, a.outlen);
      continue;
    }
    if (st == PT_FR_MORE || st == PT_FR_LOST) continue;
    if (st == PT_FR_CORRUPT) { resync = 1; start++; continue; }
    if (st == PT_FR_NOMEM) break;
    /* PT_FR_NEED: one more "read" */
    if (fed >= size) break;
    {
      size_t n = size - fed < step * 97 ? size - fed : step * 97;
      memcpy(buf + have, data + fed, n);
      have += n;
      fed += n;
    }
  }
  pt_frame_asm_free(&a);
  free(buf);
  lua_gc(S, LUA_GCCOLLECT, 0);
  return 0;
}
