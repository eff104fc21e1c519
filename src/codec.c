#include "pt.h"
void pt_open_codec(lua_State *L) { (void)L; }
