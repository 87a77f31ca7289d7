"""spawning.green.sync: the primitives between green threads on a hub of their own (``green.run``),
and in plain OS threads where there is no hub. (Between greenlets and real threads under the
monkey patch: tests/green/test_monkey.py.)"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable

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


def test_a_lock_may_be_released_by_another_green_thread_an_rlock_not() -> None:
    """threading.Lock has no owner: any green thread may release it, and a waiter gets it then.
    An RLock's release by a green thread that does not own it raises, and leaves it held."""
    lock, rlock = green.Lock(), green.RLock()

    def releaser() -> str:
        lock.release()
        try:
            rlock.release()
        except RuntimeError:
            return "refused"
        return "released"

    def main() -> tuple:
        lock.acquire()
        rlock.acquire()
        refused = green.spawn(releaser).join()
        return refused, lock.locked(), lock.acquire(False), rlock.locked(), rlock._is_owned()

    assert green.run(main) == ("refused", False, True, True, True)


def test_acquire_with_a_timeout_on_a_held_lock_times_out() -> None:
    lock, rlock = green.Lock(), green.RLock()

    def other() -> tuple:
        t0 = time.monotonic()
        got = lock.acquire(timeout=0.02), rlock.acquire(True, 0.02), lock.acquire(False), \
            rlock.acquire(blocking=False)
        return got, time.monotonic() - t0

    def main() -> tuple:
        lock.acquire()
        rlock.acquire()
        got, waited = green.spawn(other).join()
        lock.release()
        rlock.release()
        return got, waited >= 0.035, lock.acquire(timeout=0.01), rlock.acquire(timeout=0.01)

    assert green.run(main) == ((False, False, False, False), True, True, True)
    with pytest.raises(ValueError):
        green.RLock().acquire(timeout=-2)


def test_a_green_thread_killed_while_queued_leaves_the_queue() -> None:
    """A kill (GreenletExit) while waiting for a Lock or an RLock: the waiter leaves the queue, and
    the next release frees the lock instead of handing it to the dead waiter."""
    lock, rlock = green.Lock(), green.RLock()

    def main() -> tuple:
        lock.acquire()
        rlock.acquire()
        waiters = [green.spawn(lock.acquire), green.spawn(rlock.acquire)]
        green.sleep(0.01)           # both queued
        queued = len(lock._waiters), len(rlock._block._waiters)
        for t in waiters:
            t.kill()
        lock.release()
        rlock.release()
        return queued, lock.locked(), rlock.locked(), lock.acquire(False), rlock.acquire(False)

    assert green.run(main) == ((1, 1), False, False, True, True)


def test_condition_over_an_rlock_held_twice() -> None:
    """Condition.wait() releases an RLock whatever its count (_release_save), so another green thread
    can take it, and gives it back with the count it had (_acquire_restore)."""
    rlock = green.RLock()
    cond = green.Condition(rlock)
    seen: list[str] = []

    def notifier() -> None:
        with cond:                  # free although main took it twice: main waits
            seen.append("notifier in")
            cond.notify()

    def main() -> tuple:
        rlock.acquire()
        rlock.acquire()
        t = green.spawn(notifier)
        woken = cond.wait(scaled(2))
        seen.append("main back")
        t.join()
        owned = rlock._is_owned(), rlock._count
        rlock.release()
        still = rlock._is_owned()
        rlock.release()
        with pytest.raises(RuntimeError):
            rlock.release()
        return woken, owned, still, rlock.locked()

    assert green.run(main) == (True, (True, 2), True, False)
    assert seen == ["notifier in", "main back"]


def test_fork_reinit_frees_the_lock_and_forgets_its_waiters() -> None:
    """_at_fork_reinit (threading calls it in a forked child): the lock is free and no one waits,
    whoever held it in the parent; an RLock has no owner."""
    lock, rlock = green.Lock(), green.RLock()

    def main() -> tuple:
        lock.acquire()
        rlock.acquire()
        rlock.acquire()
        waiter = green.spawn(lock.acquire)
        green.sleep(0.01)
        lock._at_fork_reinit()
        rlock._at_fork_reinit()
        state = (lock.locked(), len(lock._waiters), rlock.locked(), rlock._is_owned(), rlock._count)
        waiter.kill()
        return state, lock.acquire(False), rlock.acquire(False), rlock._count

    assert green.run(main) == ((False, 0, False, False, 0), True, True, 1)


@pytest.mark.parametrize("kind", ["Lock", "RLock"])
def test_threads_and_green_threads_contend_for_one_lock(kind: str) -> None:
    """OS threads and green threads take the same lock in turn, each holding it across a switch
    (a green sleep, a thread's time.sleep(0)): no two ever hold it at once, no acquire is lost
    (a lost wake-up would leave a waiter hanging until its timeout), every increment counts."""
    lock = getattr(green, kind)()
    rounds = 200
    state = {"count": 0, "inside": 0, "overlap": 0, "timeouts": 0}

    def once(pause: Callable[[], None]) -> None:
        if not lock.acquire(timeout=scaled(5)):
            state["timeouts"] += 1
            return
        state["inside"] += 1
        if state["inside"] != 1:
            state["overlap"] += 1
        value = state["count"]
        pause()
        state["count"] = value + 1
        state["inside"] -= 1
        lock.release()

    def in_thread() -> None:
        for _ in range(rounds):
            once(lambda: time.sleep(0))

    def in_green() -> None:
        for i in range(rounds):
            if i % 2:
                with lock:      # the with form too: __enter__ / __exit__
                    state["count"] += 1
            else:
                once(lambda: green.sleep(0))

    def main() -> None:
        threads = [threading.Thread(target=in_thread) for _ in range(2)]
        for t in threads:
            t.start()
        for g in [green.spawn(in_green) for _ in range(3)]:
            g.join()
        for t in threads:
            t.join(scaled(30))

    green.run(main)
    assert state == {"count": 5 * rounds, "inside": 0, "overlap": 0, "timeouts": 0}
    assert not lock.locked()


def test_a_release_between_the_take_and_the_queueing_is_not_lost(monkeypatch: pytest.MonkeyPatch) -> None:
    """Lock's C release frees a lock no one waits for without the mutex, so it can come between a
    blocking acquire's failed take and its queueing (another OS thread's release). Here it is made
    to come exactly there: the release runs in a thread while the acquire makes its waiter. The
    acquire must still get the lock (its second take), not wait for a hand-over that never comes."""
    from spawning.green import sync

    lock = green.Lock()
    made = sync._new_waiter

    def release_meanwhile() -> object:
        t = threading.Thread(target=lock.release)
        t.start()
        t.join(0.2)     # done at once in C; the Python path's release waits for the mutex
        return made()

    lock.acquire()
    monkeypatch.setattr(sync, "_new_waiter", release_meanwhile)
    assert lock.acquire(timeout=scaled(1))
    monkeypatch.setattr(sync, "_new_waiter", made)
    assert lock.locked() and not lock._waiters
    lock.release()
    assert not lock.locked()
