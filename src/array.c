/* array.c - placeholder until the array concern lands. */
#include "pt.h"

static const char *nocross_encode(lua_State *L, int idx, pt_ref *ref) {
  (void)L; (void)idx; (void)ref; return "not implemented";
}
static void nocross_release(const pt_ref *ref) { (void)ref; }
static const char *nocross_decode(lua_State *L, const pt_ref *ref) {
  (void)L; (void)ref; return "not implemented";
}
const pt_xtype pt_xtype_array = { "procthread.Array", nocross_encode, nocross_release, nocross_decode };
void pt_open_array(lua_State *L) { (void)L; }
