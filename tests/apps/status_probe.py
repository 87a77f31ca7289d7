"""A stand-in controller component (as the status service will be): it listens on the port in
$STATUS_PROBE_PORT and answers each connection with the controller's snapshot as JSON.

Use it with ``-f status_probe.config_factory``: the default factory plus this component.
"""

import json
import os
import socket

from spawning.factories.wsgi import config_factory as default_factory


def config_factory(args):
    config = default_factory(args)
    config["components"] = ["status_probe:attach"]
    return config


def attach(controller):
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", int(os.environ["STATUS_PROBE_PORT"])))
    listener.listen(8)
    listener.setblocking(False)

    def on_readable():
        try:
            conn, _ = listener.accept()
        except BlockingIOError:
            return
        with conn:
            conn.setblocking(True)
            conn.sendall(json.dumps(controller.snapshot()).encode())

    controller.add_reader(listener.fileno(), on_readable)
    controller.at_exit(listener.close)
