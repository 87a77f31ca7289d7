"""cffi build script for spawning._core (out-of-line API mode).

Kept tiny on purpose: the declarations live in _core_cdef.h, the code in csrc/.
"""
import os
import sys

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join(os.path.dirname(HERE), "csrc")
SOURCES = ["parser.c", "env.c", "server.c", "conn.c"]

ffibuilder = FFI()
with open(os.path.join(HERE, "_core_cdef.h")) as f:
    ffibuilder.cdef(f.read())

extra = ["-std=gnu99", "-O3", "-Wall", "-Wextra"]
if os.environ.get("SPAWNING_SANITIZE"):
    extra += ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-O1"]
if os.environ.get("SPAWNING_FORCE_POLL"):
    extra += ["-DSP_FORCE_POLL"]
# Tests only: the kqueue backend on Linux, over the epoll-based stand-in in tests/c/kqueue_shim.
SHIM = os.path.join(os.path.dirname(HERE), "tests", "c", "kqueue_shim")
shim = bool(os.environ.get("SPAWNING_KQUEUE_SHIM"))
if shim:
    extra += ["-DSP_FORCE_KQUEUE"]

ffibuilder.set_source(
    "spawning._core",
    '#include "sp.h"',
    sources=[os.path.relpath(os.path.join(CSRC, s)) for s in SOURCES]
    + ([os.path.relpath(os.path.join(SHIM, "kqueue_shim.c"))] if shim else []),
    include_dirs=[os.path.relpath(CSRC)] + ([os.path.relpath(SHIM)] if shim else []),
    # Headers too: a change to core.h alone must rebuild every object that includes it.
    depends=sorted(os.path.relpath(os.path.join(CSRC, h)) for h in os.listdir(CSRC) if h.endswith(".h")),
    extra_compile_args=extra,
    extra_link_args=["-fsanitize=address,undefined"] if os.environ.get("SPAWNING_SANITIZE") else [],
    libraries=["pthread"] if sys.platform != "win32" else [],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
