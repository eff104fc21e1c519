/* shm.c - placeholder until the arena lands. */
#include "pt.h"
int pt_shm_ensure(void) { return 0; }
