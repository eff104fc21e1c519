#include "pt.h"
void pt_open_worker(lua_State *L) { (void)L; }
