"""Fallback launcher for one spawning worker when the CLI does not work:
``python bench/serve_spawning.py PORT THREADS module:app``."""

import os
import socket
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

from spawning.config import Settings
from spawning.server import Server


def main() -> None:
    port, threads, target = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    module, _, name = target.replace(":", ".").rpartition(".")
    app = getattr(__import__(module), name)
    if threads == 0:
        try:
            from spawning import monkey
            monkey.patch_all()
        except ImportError:
            pass
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port))
    s.listen(4096)
    Server(app, Settings(threads=threads, processes=1, access_log_file="/dev/null"), [s]).serve()


if __name__ == "__main__":
    main()
