"""spawning: a fast, robust WSGI HTTP/1.1 server with a C core."""

__version__ = "0.1.0"
