"""Build glue: the compiled core comes from cffi (see spawning/_build.py); metadata is in pyproject.toml.

cffi compiles the module against the stable ABI (Py_LIMITED_API), so the wheel is tagged cp310-abi3:
one wheel per platform serves Python 3.10 and every later version. Free-threaded CPython has no
stable ABI (cffi builds a version-specific module there), so its wheels keep the interpreter's tag.
"""
import sysconfig

from setuptools import setup

abi3 = not sysconfig.get_config_var("Py_GIL_DISABLED")

setup(
    cffi_modules=["spawning/_build.py:ffibuilder"],
    options={"bdist_wheel": {"py_limited_api": "cp310"}} if abi3 else {},
)
