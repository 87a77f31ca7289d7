"""spawning.green.tasks: spawn, GreenThread (join, kill), sleep and Timeout, on ``green.run``."""

from __future__ import annotations

import pytest

from spawning import green


def test_join_returns_the_result_or_raises_the_error() -> None:
    def fails() -> None:
        raise KeyError("boom")

    def main() -> tuple[int, str]:
        ok = green.spawn(lambda x: x * 2, 21)
        bad = green.spawn(fails)
        with pytest.raises(KeyError) as err:
            bad.join()
        return ok.join(), str(err.value)

    assert green.run(main) == (42, "'boom'")


def test_kill_ends_a_sleeping_thread_and_join_times_out() -> None:
    def main() -> tuple[bool, object]:
        t = green.spawn(green.sleep, 10)
        green.sleep(0)
        with pytest.raises(TimeoutError):
            t.join(0.01)
        t.kill()
        return t.dead, t.join(0)

    assert green.run(main) == (True, None)


def test_timeout_interrupts_and_a_cancelled_one_never_fires() -> None:
    def main() -> str:
        with pytest.raises(green.Timeout), green.Timeout(0.01):
            green.sleep(1)
        with green.Timeout(0.02):
            green.sleep(0.001)
        green.sleep(0.04)   # past the second one's deadline: it was cancelled on exit
        with green.Timeout(0.01, ValueError):
            try:
                green.sleep(1)
            except ValueError:
                return "custom exception"
        return "no timeout"

    assert green.run(main) == "custom exception"


def test_spawn_needs_a_hub_and_timeout_a_green_thread() -> None:
    with pytest.raises(RuntimeError, match="needs the hub"):
        green.spawn(print)
    with pytest.raises(RuntimeError, match="only in green threads"):
        green.Timeout(1).start()
