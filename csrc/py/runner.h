/* runner.h -- the CPython part of the core (csrc/py/): what the binding (spawning/_build.py) calls.
 *
 * The core proper (the files of csrc/ itself, behind sp.h) knows nothing of Python: it parses, frames and answers
 * requests named by codes. This part runs the request path on CPython against the stable ABI:
 * it builds each request's environ, calls the app, and answers through sp.h, handing whatever it
 * does not finish to spawning/wsgi/handler.py (see runner.c's theory of operation). Left out of builds
 * for other interpreters and free-threaded CPython (SP_NO_PYFAST), where spawning/wsgi/ runs alone. */
#ifndef SP_PY_RUNNER_H
#define SP_PY_RUNNER_H

/* Makes the types spawning._core.ResponseBase, Runner and Handoff and sets them on the module.
 * Call with the GIL held. Returns 0, -ENOMEM (a Python error, cleared), or -ENOSYS where the
 * CPython part is not built (PyPy, SP_NO_PYFAST). */
int sp_py_setup(void);

#endif
