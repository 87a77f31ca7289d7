"""spawning.green.sync: the primitives between green threads on a hub of their own (``green.run``),
and in plain OS threads where there is no hub. (Between greenlets and real threads under the
monkey patch: tests/green/test_monkey.py.)"""

from __future__ import annotations

import queue
import threading
import time

import pytest
from conftest import scaled

from spawning import green


def test_lock_goes_to_the_longest_waiter() -> None:
    lock = green.Lock()
    order: list[int] = []

    def contender(i: int) -> None:
        with lock:
            order.append(i)
            green.sleep(0.001)

    def main() -> None:
        with lock:
            threads = [green.spawn(contender, i) for i in range(5)]
            green.sleep(0.01)   # every contender is queued on the lock now
        for t in threads:
            t.join()

    green.run(main)
    assert order == [0, 1, 2, 3, 4]


def test_a_timeout_while_queued_passes_the_lock_on() -> None:
    """A waiter interrupted by a Timeout leaves the queue; if it had been granted the lock in
    between, it hands it on rather than lose it."""
    lock = green.Lock()

    def impatient() -> str:
        try:
            with green.Timeout(0.01):
                lock.acquire()
        except green.Timeout:
            return "timed out"
        return "acquired"

    def main() -> tuple[str, bool]:
        lock.acquire()
        result = green.spawn(impatient).join()
        lock.release()
        return result, lock.acquire(timeout=0.1)

    assert green.run(main) == ("timed out", True)


def test_semaphore_and_bounded_semaphore() -> None:
    sem = green.Semaphore(2)
    inside = [0, 0]   # now, most at once

    def user() -> None:
        with sem:
            inside[0] += 1
            inside[1] = max(inside[1], inside[0])
            green.sleep(0.005)
            inside[0] -= 1

    def main() -> None:
        for t in [green.spawn(user) for _ in range(6)]:
            t.join()

    green.run(main)
    assert inside == [0, 2]
    bounded = green.BoundedSemaphore(1)
    with pytest.raises(ValueError):
        bounded.release()


def test_condition_notify_wakes_one_waiter() -> None:
    cond = green.Condition()
    woken: list[int] = []

    def waiter(i: int) -> None:
        with cond:
            if cond.wait(scaled(2)):
                woken.append(i)

    def main() -> None:
        threads = [green.spawn(waiter, i) for i in range(3)]
        green.sleep(0.01)
        with cond:
            cond.notify()
        green.sleep(0.01)
        assert woken == [0]
        with cond:
            cond.notify_all()
        for t in threads:
            t.join()

    green.run(main)
    assert woken == [0, 1, 2]


def test_queue_get_waits_for_put_and_times_out() -> None:
    q: green.Queue = green.Queue(maxsize=1)

    def producer() -> None:
        green.sleep(0.01)
        q.put("item")

    def main() -> tuple[object, float]:
        green.spawn(producer)
        item = q.get(timeout=scaled(2))
        t0 = time.monotonic()
        with pytest.raises(queue.Empty):
            q.get(timeout=0.02)
        return item, time.monotonic() - t0

    item, waited = green.run(main)
    assert item == "item" and 0.015 <= waited < scaled(1.0)


def test_simple_queue_from_a_real_thread() -> None:
    q = green.SimpleQueue()

    def main() -> object:
        threading.Thread(target=lambda: (time.sleep(0.02), q.put(42))).start()
        return q.get(timeout=scaled(2))

    assert green.run(main) == 42


def test_without_a_hub_they_block_the_os_thread() -> None:
    """No hub: the primitives behave as threading's, between real threads."""
    lock, event = green.Lock(), green.Event()
    lock.acquire()
    assert not lock.acquire(timeout=0.01)
    threading.Thread(target=lambda: (time.sleep(0.01), lock.release(), event.set())).start()
    assert event.wait(scaled(2)) and lock.acquire(timeout=scaled(2))
    lock.release()


def test_rlock_reentrant_owned_and_handed_over() -> None:
    """An RLock's uncontended acquire and release are written out (spawning/green/sync.py): the
    owner may take it again, another green thread waits until the last release and then owns it,
    and a release by a green thread that does not own it raises."""
    lock = green.RLock()
    order: list[str] = []

    def other() -> str:
        try:
            lock.release()
            refused = "released"
        except RuntimeError:
            refused = "refused"
        with lock:
            order.append("other")
        return refused

    def main() -> tuple:
        lock.acquire()
        with lock:                      # reentrant
            t = green.spawn(other)
            green.sleep(0.01)           # other is queued on the lock now
            order.append("main")
        order.append("main still owns it")
        lock.release()
        refused = t.join()
        return refused, lock.locked(), lock.acquire(blocking=False), lock._is_owned()

    assert green.run(main) == ("refused", False, True, True)
    assert order == ["main", "main still owns it", "other"]
    with pytest.raises(RuntimeError):
        green.RLock().release()
    with pytest.raises(ValueError):
        green.Lock().acquire(False, 1)
