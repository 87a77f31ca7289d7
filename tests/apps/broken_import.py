"""An application module whose import fails: it needs a module that does not exist."""

import spawning_no_such_module  # type: ignore[import-not-found]  # noqa: F401

application = None
