"""Build glue: the compiled core comes from cffi (see spawning/_build.py); metadata is in pyproject.toml."""
from setuptools import setup

setup(cffi_modules=["spawning/_build.py:ffibuilder"])
