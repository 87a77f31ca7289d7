"""A custom factory, as a user would write one: the contract of ``spawning.factories.wsgi``.

``config_factory`` takes the positional words as ``greeting [processes]`` and returns the config,
choosing the number of processes itself; ``app_factory`` builds the app in each worker.
"""

import os


def config_factory(args):
    words = list(args.get("args") or [])
    config = dict(args)
    config["greeting"] = words[0] if words else "hi"
    if len(words) > 1:
        config["processes"] = int(words[1])
    config["controller_pid"] = os.getpid()
    config["app_factory"] = "custom_factory.app_factory"
    return config


def app_factory(config):
    body = f"{config['greeting']} from {os.getpid()} (factory ran in {config['controller_pid']})".encode()

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]

    return app
