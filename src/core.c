/* core.c - the module entry: builds the procthread.core table. */
#include "pt.h"
#include "worker.h"

#include <dlfcn.h>
#include <pthread.h>

/* Worker threads run code of this library until they end, possibly after
   the Lua state that loaded it has been closed (and has dlclose'd it).
   Pin the library in memory once so that can never unmap running code. */
static pthread_once_t pin_once = PTHREAD_ONCE_INIT;

static const char pin_anchor = 0;

static void pin_library(void) {
  Dl_info info;
  if (dladdr(&pin_anchor, &info) && info.dli_fname)
    (void)dlopen(info.dli_fname, RTLD_NOW | RTLD_NODELETE | RTLD_NOLOAD);
}

/* The types that cross by reference, made known to the codec once per
   process.  The order is the wire format (a type travels as its index):
   append new types at the end, never reorder. */
static pthread_once_t xtypes_once = PTHREAD_ONCE_INIT;

static void register_xtypes(void) {
  (void)pt_codec_register(&pt_xtype_table);        /* 0 */
  (void)pt_codec_register(&pt_xtype_array);        /* 1 */
  (void)pt_codec_register(&pt_xtype_pipe);         /* 2 */
  (void)pt_codec_register(&pt_xtype_channel);      /* 3 */
  (void)pt_codec_register(&pt_xtype_semaphore);    /* 4 */
  (void)pt_codec_register(&pt_xtype_event);        /* 5 */
  (void)pt_codec_register(&pt_xtype_barrier);      /* 6 */
  pt_worker_register(&pt_thread_ops);              /* pt.spawn's kinds */
  pt_worker_register(&pt_process_ops);
}

int luaopen_procthread_core(lua_State *L) {
  pthread_once(&pin_once, pin_library);
  pthread_once(&xtypes_once, register_xtypes);
  lua_newtable(L);
  pt_open_sys(L);
  pt_open_codec(L);
  pt_open_worker(L);
  pt_open_lifecycle(L);
  pt_open_table(L);
  pt_open_array(L);
  pt_open_pipe(L);
  pt_open_select(L);
  pt_open_channel(L);
  pt_open_sync(L);
  pt_open_floor(L);
  return 1;
}
