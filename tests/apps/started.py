"""Test apps say a request has reached them: tests wait for that instead of sleeping.

``mark()`` appends a line (the worker's pid) to the file named by ``$SPAWNING_TEST_STARTED``,
if set; conftest's ``wait_started`` waits for the lines.
"""

import os


def mark() -> None:
    """Records that a request entered the app (nothing without ``$SPAWNING_TEST_STARTED``)."""
    path = os.environ.get("SPAWNING_TEST_STARTED")
    if path:
        with open(path, "a") as f:
            f.write(f"{os.getpid()}\n")
