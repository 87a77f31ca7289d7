/* unit.c -- the CPython part, compiled as one translation unit (spawning/_build.py builds this
 * file, not the ones it includes), as csrc/conn/unit.c compiles the connection part.
 *
 * Why: the part was one file, runner.c, and its request path leans on the compiler inlining small
 * static functions into run() (making the environ, packing the head); one unit keeps that as it
 * was. The files share py.h; their functions are static, so they compile only here, in this
 * order (sp_py_setup, in runner.c, reads the others' type specs and tables). */
#include "response.c"
#include "input.c"
#include "environ.c"
#include "answer.c"
#include "runner.c"
#include "hub.c"
#include "glock.c"
#include "glocal.c"
