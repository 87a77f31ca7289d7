"""spawning.green.pool: run_in_thread runs a blocking call in a real OS thread while the hub goes on."""

from __future__ import annotations

import threading
import time

import pytest

from spawning import green


def test_blocking_call_runs_off_the_hub() -> None:
    ticks = [0]

    def ticker() -> None:
        while True:
            green.sleep(0.002)
            ticks[0] += 1

    def blocking() -> int:
        time.sleep(0.05)          # the real sleep: blocks its OS thread
        return threading.get_ident()

    def main() -> int:
        t = green.spawn(ticker)
        ident = green.run_in_thread(blocking)
        t.kill()
        return ident

    assert green.run(main) != threading.get_ident()
    assert ticks[0] >= 5          # the hub kept running while the call blocked


def test_the_calls_exception_comes_back() -> None:
    def fails() -> None:
        raise OSError("no route")

    with pytest.raises(OSError, match="no route"):
        green.run(green.run_in_thread, fails)


def test_outside_the_hub_it_is_a_plain_call() -> None:
    assert green.run_in_thread(threading.get_ident) == threading.get_ident()
