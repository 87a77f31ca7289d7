/* unit.c -- the connection part, compiled as one translation unit (spawning/_build.py builds this
 * file, not the ones it includes), as loop.c includes its backend.
 *
 * Why: the part was one file, conn.c, and its hot path leans on the compiler inlining small
 * functions into their callers (releasing the read buffer, skipping a read body, queueing,
 * looking a code up). Split into objects, those became calls again: about 20 more instructions
 * per request in the core (bench/instructions.py, hello world); one unit gives them back, and
 * inlines what were calls between server.c's and conn.c's old halves too (about 75 fewer than
 * before the split). Each file still includes what it uses and compiles alone. */
#include "server.c"
#include "conn.c"
#include "input.c"
#include "output.c"
#include "head.c"
#include "body.c"
#include "api.c"
