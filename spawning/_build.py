"""cffi build script for spawning._core (out-of-line API mode).

Kept tiny on purpose: the declarations live in _core_cdef.h, the code in csrc/.
"""
import glob
import os
import sys
import sysconfig

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join(os.path.dirname(HERE), "csrc")
# The core's parts, bottom layer first (csrc/http/: parsing; loop/: the event loop, which includes
# its one backend; conn/: the connections, as one unit that includes the part's files: see
# csrc/conn/unit.c), then the CPython part (csrc/py/: the request runner, behind py/runner.h, also
# one unit: csrc/py/unit.c).
SOURCES = ["http/parser.c", "http/env.c", "http/proxy.c", "loop/loop.c", "loop/flusher.c", "conn/unit.c", "py/unit.c"]

# cffi compiles against the stable ABI except on debug and free-threaded builds; we do the same.
LIMITED_API = not (hasattr(sys, "gettotalrefcount") or sysconfig.get_config_var("Py_GIL_DISABLED"))

ffibuilder = FFI()
with open(os.path.join(HERE, "_core_cdef.h")) as f:
    ffibuilder.cdef(f.read())

# Hidden visibility: calls between our files go direct, not through the PLT (the module's init
# function is exported by its own attribute).
extra = ["-std=gnu99", "-O3", "-Wall", "-Wextra"]
if sys.platform != "win32":
    extra += ["-fvisibility=hidden"]
if os.environ.get("SPAWNING_SANITIZE"):
    # Through libc's wrappers, whose buffers ASan checks (csrc/loop/sysio.h).
    # SP_CHECK_STATES: an illegal connection state change aborts (csrc/conn/conn.h).
    extra += ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-O1", "-DSP_LIBC_SYSCALLS",
              "-DSP_CHECK_STATES"]
# csrc/py/ is written against the CPython API; elsewhere (and in a test build of the Python
# path alone) spawning/wsgi/ runs every request itself. Also on free-threaded builds: the runner swaps
# its spare response object and reads its members without a lock, which only the GIL makes safe.
if (sys.implementation.name != "cpython" or os.environ.get("SPAWNING_NO_PYFAST")
        or sysconfig.get_config_var("Py_GIL_DISABLED")):
    extra += ["-DSP_NO_PYFAST"]
if os.environ.get("SPAWNING_FORCE_POLL"):
    extra += ["-DSP_FORCE_POLL"]
# Tests only: the kqueue backend on Linux, over the epoll-based stand-in in tests/c/kqueue_shim.
SHIM = os.path.join(os.path.dirname(HERE), "tests", "c", "kqueue_shim")
shim = bool(os.environ.get("SPAWNING_KQUEUE_SHIM"))
if shim:
    extra += ["-DSP_FORCE_KQUEUE"]

# Which calls keep the GIL. cffi releases it around every call, and takes the errno snapshot
# that ffi.errno reads: on the hello-world path that was a good part of the cost of the whole
# crossing (the GIL's mutex and condition variable, cffi's thread-local state; the figures are in
# bench/README.md, "Why the code is as it is"). The functions named here never wait: they take the
# server's mutex (held only for short, non-blocking work; no thread waits for the GIL while
# holding it) and make non-blocking system calls, so keeping the GIL costs other threads nothing
# they would not wait for anyway. Everything that can wait (sp_poll*, sp_req_read_wait,
# sp_req_drain, sp_req_sendfile) still releases it. None of them sets errno for Python: their
# errors are their -errno results. The wrappers cffi generates follow this preamble and use the
# two macros by name; __func__ is the wrapper's name, and the compiler folds the comparisons.
KEEP_GIL = (
    "sp_code_answer", "sp_code_answer_whole", "sp_code_req", "sp_code_env", "sp_code_head",
    "sp_code_peek", "sp_code_respond",
    "sp_req_start", "sp_req_respond", "sp_req_write", "sp_req_flush", "sp_req_read",
    "sp_req_wait", "sp_req_finish", "sp_watch", "sp_unwatch",
    "sp_server_connections", "sp_server_stats", "sp_server_wakeup", "sp_parse_request",
    "sp_request_framing", "sp_chunked_decode", "sp_decode_path", "sp_env_pack",
    "sp_last_duration_us",
    "sp_py_setup",   # must: it calls the CPython API (csrc/py/runner.c)
)
PREAMBLE = """#include "sp.h"
#include "py/runner.h"
#include <string.h>
static inline __attribute__((always_inline)) int sp_keeps_gil(const char *wrapper) {
    return %s;
}
static void sp_cffi_restore_errno(void) { _cffi_restore_errno(); }
static void sp_cffi_save_errno(void) { _cffi_save_errno(); }
#undef _cffi_restore_errno
#undef _cffi_save_errno
#undef Py_BEGIN_ALLOW_THREADS
#undef Py_END_ALLOW_THREADS
#define _cffi_restore_errno() do { if (!sp_keeps_gil(__func__)) sp_cffi_restore_errno(); } while (0)
#define _cffi_save_errno() do { if (!sp_keeps_gil(__func__)) sp_cffi_save_errno(); } while (0)
#define Py_BEGIN_ALLOW_THREADS { PyThreadState *_save = sp_keeps_gil(__func__) ? NULL : PyEval_SaveThread();
#define Py_END_ALLOW_THREADS if (_save) PyEval_RestoreThread(_save); }
""" % " ||\n           ".join(f'!strcmp(wrapper, "_cffi_f_{n}")' for n in KEEP_GIL)

ffibuilder.set_source(
    "spawning._core",
    PREAMBLE,
    sources=[os.path.relpath(os.path.join(CSRC, s)) for s in SOURCES]
    + ([os.path.relpath(os.path.join(SHIM, "kqueue_shim.c"))] if shim else []),
    include_dirs=[os.path.relpath(CSRC)] + ([os.path.relpath(SHIM)] if shim else []),
    # Headers and included .c files too (conn/unit.c's, the backends): a change to one of them
    # alone must rebuild every object that includes it.
    depends=sorted(os.path.relpath(f) for f in glob.glob(os.path.join(CSRC, "**", "*.[ch]"), recursive=True)),
    extra_compile_args=extra,
    # The stable ABI of 3.10, the wheel's tag (setup.py), rather than cffi's default of 3.2's:
    # csrc/py/ uses METH_FASTCALL and PyObject_CallNoArgs.
    define_macros=[("Py_LIMITED_API", "0x030A0000")] if LIMITED_API else [],
    extra_link_args=["-fsanitize=address,undefined"] if os.environ.get("SPAWNING_SANITIZE") else [],
    libraries=["pthread"] if sys.platform != "win32" else [],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
