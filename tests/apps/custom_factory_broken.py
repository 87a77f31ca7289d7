"""Factories that fail, for the one-line error tests."""


def config_factory(args):
    raise RuntimeError("cannot reach the configuration service")


def config_factory_ok_app_fails(args):
    config = dict(args)
    config["app_factory"] = "custom_factory_broken.failing_app_factory"
    return config


def failing_app_factory(config):
    raise KeyError("SECRET_KEY")
