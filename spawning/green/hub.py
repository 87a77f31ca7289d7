"""The hub: the greenlet that drives a worker's C loop (``--threads 0``) and parks the others.

Theory of operation
-------------------
The *hub* is a greenlet that owns the worker's ``sp_server`` loop. Each turn it

1. resumes every greenlet made runnable since the last turn (the *ready* queue),
2. runs callables other OS threads handed over (``call_threadsafe``: DNS results, a real thread
   setting an ``Event``...),
3. calls ``sp_poll()`` once, with a timeout taken from its timer heap (0 when work is ready), and
   handles the whole batch it returns: ``SP_EV_REQUEST`` starts a greenlet running the WSGI
   handler at once (a fast app runs to completion inside that switch: no thread hand-off, no
   queue), ``SP_EV_FD`` wakes whoever waits on that token,
4. fires expired timers.

A greenlet that must wait parks on a :class:`Waiter`: it registers whatever will wake it (a
token with the C loop, a timer, a place in a lock's queue) and switches to the hub. Every wake-up
goes through the ready queue, and a waiter resumes its greenlet at most once, so a timer that
fires after an fd event (or a ``Timeout`` thrown in between) can never resume a greenlet that has
moved on to wait for something else.

A wake-up from another OS thread reaches the hub through ``call_threadsafe`` (a deque plus
``sp_server_wakeup``): that is how the primitives of spawning.green.sync work across greenlets and
real threads.

On CPython the hot part of a turn is C's (csrc/py/hub.c, ``GreenLoop``: ``_loop_c``): it polls and
hands each batch's requests to greenlets until the loop has Python work (fd events, the ready queue,
thread calls, a timer due, the finish test, a wake-up), and a request greenlet that runs out of
requests polls in the hub's place under the same rules, so that a steady stream of requests runs
without coming back here. PyPy and SPAWNING_NO_PYFAST=1 run ``_loop``, all of it in Python.

One hub runs per process at most (``run_hub``); the module keeps it, and ``_coop_hub()`` tells the
rest of the package whether the caller may park on it or must block its OS thread instead.
"""

from __future__ import annotations

import _thread
import errno
import heapq
import logging
import os
import signal
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from greenlet import GreenletExit, getcurrent, greenlet  # type: ignore[import-untyped]

from .. import _core
from .._core import ffi, lib
from ..wsgi.response import FAST
from .waiter import _CLOSED, TIMEDOUT, Waiter

log = logging.getLogger("spawning")

# Captured at import, before spawning.green.monkey can replace any of them.
_monotonic = time.monotonic
_real_sleep = time.sleep
_get_ident = _thread.get_ident

READ = lib.SP_READ
WRITE = lib.SP_WRITE
_EV_REQUEST = lib.SP_EV_REQUEST
_BATCH = 256
_IDLE_MAX = 256          # idle request greenlets kept for reuse
_MAX_POLL_MS = 1000      # the loop looks at its finish condition at least this often


# ---- the hub -----------------------------------------------------------------------------------------


class _Timer:
    __slots__ = ("args", "cancelled", "fn", "hub", "when")

    def __init__(self, hub: Hub, when: float, fn: Callable, args: tuple) -> None:
        self.hub = hub
        self.when = when
        self.fn = fn
        self.args = args
        self.cancelled = False

    def __lt__(self, other: _Timer) -> bool:
        return self.when < other.when

    def cancel(self) -> None:
        if not self.cancelled:
            self.cancelled = True
            self.hub._cancelled += 1


class _FdWatch:
    """The greenlets waiting on one fd (not a request's own socket) for reading or writing."""

    __slots__ = ("fd", "readers", "token", "writers")

    def __init__(self, fd: int, token: int) -> None:
        self.fd = fd
        self.token = token
        self.readers: list[Waiter] = []
        self.writers: list[Waiter] = []

    def on_fd(self, hub: Hub, mask: int) -> None:
        if mask & READ and self.readers:
            ws, self.readers = self.readers, []
            for w in ws:
                w.wake(mask)
        if mask & WRITE and self.writers:
            ws, self.writers = self.writers, []
            for w in ws:
                w.wake(mask)
        if self.readers or self.writers:   # the one-shot registration is spent: re-arm the rest
            hub._arm(self)


class Hub:
    """The loop of one process (see the module docstring). ``srv`` is the C loop it drives and
    ``finished`` the test its loop ends on; ``handle``, the WSGI handler a request greenlet runs, is
    set by whoever made it (spawning.server in green mode; run() sets none: no listener)."""

    def __init__(self, srv: Any, finished: Callable[[], bool]) -> None:
        self.srv = srv
        self.finished = finished
        self.glet = greenlet(self._loop)
        self.ident = _get_ident()
        self.ready: deque = deque()
        self.timers: list[_Timer] = []
        self._cancelled = 0
        self.tokens: dict[int, Any] = {}
        self._token = 0
        self.watches: dict[int, _FdWatch] = {}
        self.thread_calls: deque = deque()
        self.handle: Callable | None = None
        self.idle: list = []          # request greenlets waiting for their next request
        # On CPython the hot turn is C's (csrc/py/hub.c: it polls and hands out batches of requests
        # until Python has work, see _loop); elsewhere (PyPy, SPAWNING_NO_PYFAST=1) this loop polls.
        self._cloop: Any = None
        if FAST:
            self._cloop = _core.GreenLoop(  # type: ignore[attr-defined]
                int(ffi.cast("uintptr_t", srv)), srv, self.ready, self.thread_calls, self.idle,
                self._spawn, finished, greenlet, _MAX_POLL_MS, self.timers)
        else:
            self.events = ffi.new("sp_event[]", _BATCH)
            self.codes = ffi.new("int64_t[]", _BATCH)   # request codes of the batch, 0 for fd events
        # The codes of the current poll batch's requests not yet taken: the hub and the request
        # greenlets take from it in turn (see _request_worker). The C turn keeps them itself.
        self.batch: Any = self._cloop if self._cloop is not None else deque()
        # One of each for every request greenlet's state tuple (_request_worker), which a
        # waiting request holds: a bound method each would cost each one more memory.
        self._take = self.batch.popleft
        self._switch = self.glet.switch
        # Every request greenlet made (weakly: the idle pool's overflow dies), so that a drain can
        # find the ones still running (end_requests). Added to only when one is made: no cost
        # per request.
        self.request_glets: weakref.WeakSet = weakref.WeakSet()
        self._ending: _Timer | None = None

    # -- scheduling (hub thread) --

    def schedule(self, fn: Callable, *args: Any) -> None:
        self.ready.append((fn, args))

    def call_later(self, seconds: float, fn: Callable, *args: Any) -> _Timer:
        t = _Timer(self, _monotonic() + max(seconds, 0.0), fn, args)
        heapq.heappush(self.timers, t)
        return t

    def call_threadsafe(self, fn: Callable, *args: Any) -> None:
        """From any thread: runs fn(*args) in the hub soon."""
        self.thread_calls.append((fn, args))
        lib.sp_server_wakeup(self.srv)

    def new_token(self, obj: Any) -> int:
        self._token += 1
        self.tokens[self._token] = obj
        return self._token

    # -- waiting on fds (called from greenlets) --

    def _arm(self, watch: _FdWatch) -> None:
        mask = (READ if watch.readers else 0) | (WRITE if watch.writers else 0)
        rc = lib.sp_watch(self.srv, watch.fd, mask, watch.token)
        if rc < 0:
            if rc == -errno.EPERM:      # a regular file: epoll refuses it, and it is always ready
                self.schedule(watch.on_fd, self, READ | WRITE)
                return
            waiters = watch.readers + watch.writers
            watch.readers, watch.writers = [], []
            for w in waiters:
                w.wake(OSError(-rc, os.strerror(-rc)))

    def wait_fds(self, pairs: Iterable[tuple[int, int]], timeout: float | None) -> Any:
        """Parks the current greenlet until one of the (fd, READ|WRITE) pairs is ready. Returns the
        event mask, TIMEDOUT, or raises OSError (the fd cannot be watched or was closed)."""
        w = Waiter(self)
        for fd, mask in pairs:
            watch = self.watches.get(fd)
            if watch is None:
                watch = _FdWatch(fd, 0)
                watch.token = self.new_token(watch)
                self.watches[fd] = watch
            if mask & READ:
                watch.readers.append(w)
            if mask & WRITE:
                watch.writers.append(w)
            self._arm(watch)
        try:
            value = w.wait(timeout)
        finally:
            for fd, _ in pairs:       # the lists may have been swapped: look them up again
                watch = self.watches.get(fd)
                if watch is not None:
                    if w in watch.readers:
                        watch.readers.remove(w)
                    if w in watch.writers:
                        watch.writers.remove(w)
        if value is _CLOSED:
            raise OSError(errno.EBADF, "file descriptor closed while waiting on it")
        if isinstance(value, OSError):
            raise value
        return value

    def forget_fd(self, fd: int) -> None:
        """The fd is being closed: drop its watch (waiters get EBADF)."""
        watch = self.watches.pop(fd, None)
        if watch is None:
            return
        self.tokens.pop(watch.token, None)
        lib.sp_unwatch(self.srv, fd)
        for w in watch.readers + watch.writers:
            w.wake(_CLOSED)

    def wait_req(self, code: int, mask: int, timeout: float | None) -> bool:
        """Parks until the connection of the request a code names can progress for mask. False
        on timeout."""
        w = Waiter(self)
        token = self.new_token(w)
        rc = lib.sp_req_wait(self.srv, code, mask, token)
        if rc < 0:
            del self.tokens[token]
            return True          # let the caller retry and see the error
        try:
            value = w.wait(timeout)
        finally:
            self.tokens.pop(token, None)
        return value is not TIMEDOUT

    # -- the loop --

    def _run_ready(self) -> None:
        ready = self.ready
        for _ in range(len(ready)):      # only what is ready now: sleep(0) loops cannot starve I/O
            fn, args = ready.popleft()
            try:
                fn(*args)
            except BaseException:
                log.exception("unhandled error in a green thread")

    def _run_thread_calls(self) -> None:
        calls = self.thread_calls
        while calls:
            fn, args = calls.popleft()
            try:
                fn(*args)
            except BaseException:
                log.exception("error in a call handed to the hub")

    def _run_timers(self) -> None:
        timers = self.timers
        now = _monotonic()
        while timers and timers[0].when <= now:
            t = heapq.heappop(timers)
            if t.cancelled:
                self._cancelled -= 1
                continue
            t.cancelled = True
            try:
                t.fn(*t.args)
            except BaseException:
                log.exception("error in a timer callback")
        if self._cancelled > 512 and self._cancelled > len(timers) // 2:
            # Cancelled timers are dropped lazily; rebuild once they are most of the heap. In
            # place: the C turn (csrc/py/hub.c) holds the list.
            timers[:] = [t for t in timers if not t.cancelled]
            heapq.heapify(timers)
            self._cancelled = 0

    def _request_worker(self, code: int) -> None:
        """Body of a request greenlet: runs requests, parking in the idle pool in between. Reusing
        greenlets matters: a new one costs Python a fresh frame stack (an mmap and a munmap).

        Once a request is over, handle() takes the batch's next code itself (``green``, see
        spawning.wsgi.handler.make_handler) and runs it here and now, as the hub would have by switching to an
        idle greenlet, minus the two switches; first it resets what the request left behind. The
        hub's loop over the batch takes from the same deque, and wake-ups go through the ready
        queue, so a greenlet resumes either from that loop or between batches, when the deque
        is empty. Once the deque is empty the greenlet joins the idle list and switches to the
        hub: in C on CPython (handle() does not return), after polling in the hub's place when
        the hub has nothing to do first (csrc/py/hub.c, gl_poll_here), else below."""
        handle = self.handle
        idle = self.idle
        hub_glet = self.glet
        me = getcurrent()
        mine = me.__dict__   # one dict for the greenlet's life (spawning.green.local uses it)
        batch = self.batch
        take = self._take
        # On CPython the C path (csrc/py/runner.c) also waits in the idle list itself once the
        # batch is empty, and goes on with the code the hub switches in: no Python frame per
        # batch on this side. handle() returns when that list is full, < 0 when GreenletExit came
        # while it waited there (the greenlet ends, as below), or for a request Python ran.
        green = (me, mine, batch, take, idle, self._switch, _IDLE_MAX, GreenletExit)
        while True:
            try:
                if handle(code, take, green) < 0:  # type: ignore[misc]
                    return
            except BaseException:   # handle() answers app errors itself: this is a bug
                log.exception("internal error handling a request")
                mine.clear()
                me.gr_context = None
            if len(idle) >= _IDLE_MAX:
                return
            idle.append(me)
            code = hub_glet.switch()

    def _spawn(self, code: int) -> None:
        """Runs the request ``code`` names in a new request greenlet (none idle); nothing without
        a handler (run(): no listener)."""
        if self.handle is not None:
            g = greenlet(self._request_worker, self.glet)
            self.request_glets.add(g)
            g.switch(code)

    def _loop(self) -> None:
        if self._cloop is not None:
            self._loop_c()
            return
        srv = ffi.cast("sp_server *", self.srv)   # a plain pointer passes faster; self.srv owns it
        events = self.events
        codes = self.codes
        poll = lib.sp_poll_codes
        unpack = ffi.unpack
        ready = self.ready
        thread_calls = self.thread_calls
        tokens = self.tokens
        finished = self.finished
        hub_glet = self.glet
        handle = self.handle
        idle = self.idle
        worker = self._request_worker
        pending = self.batch
        take = pending.popleft
        while True:
            if ready:
                self._run_ready()
            if thread_calls:
                self._run_thread_calls()
            if finished():
                return
            if ready or thread_calls:
                timeout = 0
            elif self.timers:
                timeout = int((self.timers[0].when - _monotonic()) * 1000 + 0.999)
                timeout = 0 if timeout < 0 else min(timeout, _MAX_POLL_MS)
            else:
                timeout = _MAX_POLL_MS
            if _forked_child:
                log.error("a process the app forked came back to the server's loop: it exits "
                          "(the parent serves the connections)")
                os._exit(1)
            n = poll(srv, events, codes, _BATCH, timeout)
            if n > 0:
                # fd events first (sp.h: they come before the batch's requests): they only
                # schedule greenlets, which run next turn.
                batch = unpack(codes, n)
                i = 0
                while i < n and not batch[i]:
                    obj = tokens.get(events[i].token)
                    if obj is not None:
                        obj.on_fd(self, events[i].mask)
                    i += 1
                if i < n:
                    pending.extend(batch[i:] if i else batch)
                    while pending:
                        code = take()
                        if idle:
                            idle.pop().switch(code)
                        elif handle is not None:
                            g = greenlet(worker, hub_glet)
                            self.request_glets.add(g)
                            g.switch(code)
            if n < 0 and n != -errno.EINTR:
                log.error("event loop failed: %s", os.strerror(-n))
                _real_sleep(0.05)
            if self.timers:
                self._run_timers()

    def _loop_c(self) -> None:
        """_loop with its hot part in C (csrc/py/hub.c): ``turn`` polls and hands out batches of
        requests as the loop above does, and comes back here only with work for Python: the
        fd events of a batch (its requests then go out through ``dispatch``), the ready queue,
        thread calls, a timer due, the finish test true, a wake-up or a timeout, an error. So
        every rule below is the loop above's, in the same order."""
        ready = self.ready
        thread_calls = self.thread_calls
        tokens = self.tokens
        finished = self.finished
        turn = self._cloop.turn
        while True:
            if ready:
                self._run_ready()
            if thread_calls:
                self._run_thread_calls()
            if finished():
                return
            if _forked_child:
                log.error("a process the app forked came back to the server's loop: it exits "
                          "(the parent serves the connections)")
                os._exit(1)
            r = turn()
            if type(r) is list:       # fd events, then the batch's requests
                for token, mask in r:
                    obj = tokens.get(token)
                    if obj is not None:
                        obj.on_fd(self, mask)
                self._cloop.dispatch()
            elif r < 0 and r != -errno.EINTR:
                log.error("event loop failed: %s", os.strerror(-r))
                _real_sleep(0.05)
            if self.timers:
                self._run_timers()


    def watch_finish(self, on: bool) -> None:
        """Any thread: whether the C turn (csrc/py/hub.c) calls the finish test before each poll,
        as this loop does each turn (the default). Off is for an owner whose test stays false
        until that owner turns this on again (spawning.server: until stop() or drain()), and
        spares a Python call a poll, which is most of a poll's cost when each brings one request.
        This loop itself still calls it each time turn() comes back."""
        if self._cloop is not None:
            self._cloop.watch_finish(on)

    def end_requests_after(self, grace: float) -> None:
        """Hub thread: ``end_requests`` in ``grace`` seconds, once however often asked."""
        if self._ending is None:
            self._ending = self.call_later(grace, self.end_requests)

    def end_requests(self) -> None:
        """Throws GeneratorExit into every request greenlet still running (a draining worker's
        long streams and long polls): the app sees it where it waits, or at its generator's
        ``yield`` when the server closes it, and the handler (spawning.wsgi) ends the response:
        503 if nothing went out, else the stream's end. Hub thread only."""
        idle = {id(g) for g in self.idle}
        running = [g for g in list(self.request_glets) if g and id(g) not in idle]
        if running:
            log.info("worker %d: ending %d request%s still running after --stream-grace",
                     os.getpid(), len(running), "" if len(running) == 1 else "s")
        for g in running:
            # Each throw runs only that greenlet until it parks again (or goes idle): the others
            # stay where they were, so the list holds.
            if g:
                g.throw(GeneratorExit)


_hub: Hub | None = None
# Set in a child the app forks while the hub runs (os.fork, multiprocessing's fork start method):
# the child shares the parent's epoll set, so a hub running there would take the parent's
# connections. In the child there is no hub: what waits blocks the child's OS thread, and a
# child that comes back to the hub's loop exits instead of polling.
_forked_child = False


def _after_fork_in_child() -> None:
    global _hub, _forked_child
    if _hub is not None:
        if _hub._cloop is not None:
            _hub._cloop.interrupt()   # the C turn comes back to _loop_c, which exits
        _hub = None
        _forked_child = True


os.register_at_fork(after_in_child=_after_fork_in_child)


def end_requests_after(grace: float) -> None:
    """From any thread: once ``grace`` seconds have passed, requests still running in this
    process's hub get GeneratorExit (``Hub.end_requests``). Nothing without a hub."""
    hub = _hub
    if hub is not None:
        hub.call_threadsafe(hub.end_requests_after, grace)


def _coop_hub() -> Hub | None:
    """The hub, if the caller is a greenlet it can suspend; None means: block the OS thread."""
    hub = _hub
    if hub is None or hub.ident != _get_ident():
        return None
    cur = getcurrent()
    if cur is hub.glet or not hub.glet:
        return None
    return hub


def cooperative() -> bool:
    """True when the caller runs in a green thread under the hub, so that waiting here suspends
    only this greenlet. False in other OS threads, outside ``serve()``/``run()``, and in the hub."""
    return _coop_hub() is not None


def hub_running() -> bool:
    """True while a hub runs in this process (``--threads 0`` or inside ``run()``)."""
    return _hub is not None


def forget_fd(fd: int) -> None:
    """Tells the hub that ``fd`` is about to be closed (the patched socket does this). Harmless
    when there is no hub or nothing watches it."""
    hub = _hub
    if hub is not None and hub.watches and _get_ident() == hub.ident:
        hub.forget_fd(fd)


def _require_hub(what: str) -> Hub:
    hub = _hub
    if hub is None:
        raise RuntimeError(f"spawning.green.{what} needs the hub: run the app with --threads 0, "
                           "or call spawning.green.run()")
    return hub


def _install_wakeup(fd: int) -> Any:
    """Routes signals to the loop's wake pipe so a signal ends sp_poll() at once, unless somebody
    (the worker's housekeeping) already listens on a wakeup fd: theirs stays. Returns what to
    restore, or None."""
    try:
        old = signal.set_wakeup_fd(fd, warn_on_full_buffer=False)
    except (ValueError, OSError):     # not the main thread
        return None
    if old != -1:
        signal.set_wakeup_fd(old)
        return None
    return -1


def _restore_wakeup(saved: Any) -> None:
    if saved is not None:
        try:
            signal.set_wakeup_fd(saved)
        except (ValueError, OSError):
            pass


def run_hub(hub: Hub, wakeup_fd: int) -> None:
    """Makes ``hub`` this process's hub and runs its loop until its finish test says so; signals
    write to ``wakeup_fd`` meanwhile (see _install_wakeup)."""
    global _hub
    if _hub is not None:
        raise RuntimeError("a spawning.green hub already runs in this process")
    _hub = hub
    saved = _install_wakeup(wakeup_fd)
    try:
        hub.glet.switch()
    finally:
        _restore_wakeup(saved)
        _hub = None

