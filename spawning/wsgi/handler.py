"""The request handler the server calls: runs the request a code names through the WSGI app and
answers it.

Theory of operation
-------------------
The C core names each request by a *code* (csrc/sp.h, request codes): a number the sp_code_* and
sp_req_* functions look up under the server's lock, so that a code kept past its request (an
app's stale write()) finds nothing instead of a connection that serves someone else now.

This is the general path: the whole behaviour, with no cache of its own. It is what PyPy runs,
and what a process started with SPAWNING_NO_PYFAST=1 runs. On CPython every request first goes
to the C path (csrc/py/runner.c, ``Runner``), which builds the environ, calls the app and answers
the common shapes itself under the same rules; what it does not finish comes back here as a
``Handoff`` (the request as C left it) and goes on below.

A request goes: environ (spawning.wsgi.environ), the app, the answer (spawning.wsgi.response: a
list of one bytes object in one crossing, anything else streamed), the access log line
(spawning.wsgi.accesslog). Each way a request can end early has its own exit in ``Handler``:
the client went away, the body broke the rules, the app raised, a draining green worker ended
it, or a BaseException that must go up.

Blocking is delegated to a *waiter* so the same code serves both dispatchers: ``ThreadWaiter``
blocks in C with the GIL released; the green waiter (spawning.green) parks the greenlet on the hub.
A waiter has ``read(code, buf, n)``, ``drain(code, low_water)`` and ``wait_writable(code)``.
"""

from __future__ import annotations

import logging
import select
from collections.abc import Callable
from itertools import chain
from typing import Any

from .._core import ffi, lib
from .accesslog import AccessLog
from .environ import request_environ
from .forwarded import ProxyTrust
from .input import EMPTY_INPUT, BodyError, ClientDisconnected, Input
from .response import ERR_HEAD, FAST, INTERNAL_ERROR, SHUTTING_DOWN, FileWrapper, Response

if FAST:
    from .._core import Runner  # type: ignore[attr-defined]
else:
    Runner = None

log = logging.getLogger("spawning")


class ThreadWaiter:
    """Blocking done in C with the GIL released: thread mode."""

    __slots__ = ("body_timeout_ms", "srv")

    def __init__(self, srv: Any, body_timeout_ms: int) -> None:
        self.srv = srv
        self.body_timeout_ms = body_timeout_ms

    def read(self, code: int, buf: Any, n: int) -> int:
        return lib.sp_req_read_wait(self.srv, code, buf, n, self.body_timeout_ms)

    def drain(self, code: int, low_water: int) -> int:
        return lib.sp_req_drain(self.srv, code, low_water)

    def wait_writable(self, code: int) -> None:
        req = lib.sp_code_req(self.srv, code)   # read at once, never kept (csrc/sp.h)
        if req != ffi.NULL:
            select.select([], [req.fd], [], 1.0)


def make_handler(app: Callable, srv: Any, base_envs: list[dict], waiter: Any,
                 access_log: AccessLog | None, threads: int = 1,
                 poll_ms: int = -1, forwarded: ProxyTrust | None = None) -> Callable[..., int]:
    """Returns ``handle(code, take_next=None, green=None)``: runs the request a code names (sp.h)
    through the app and answers it.

    In thread mode (the server's config says chain) the common response also takes the calling
    thread's next request in the same crossing if one is queued (``sp_code_answer``), which
    ``handle`` then runs itself. Each time a request brings no next one, ``take_next()`` is
    asked for it (thread mode: a poll); ``handle`` returns what it gives when that is not a
    request code (0, or a poll's -errno), or 0 at once without ``take_next``. In a request
    greenlet ``green`` is (the greenlet, its ``__dict__``, the hub's batch deque, its popleft,
    the hub's idle list, the hub's switch, the idle list's limit, GreenletExit): its state is reset
    and ``take_next`` (the deque's popleft) is asked only while the deque holds codes; once none is
    left the C path waits in the idle list for the hub's next code itself, and ``handle`` returns
    0 when that list is full, < 0 when the greenlet must end (GreenletExit came while it waited).
    ``threads``: how many OS threads call ``handle``; ``poll_ms``, thread mode's poll timeout
    (``take_next`` polls with it), which the C path (csrc/py/runner.c) then polls with itself.
    ``forwarded``: the trusted proxies whose headers rewrite an environ (spawning.wsgi.forwarded)."""
    return Handler(app, srv, base_envs, waiter, access_log, poll_ms, forwarded).handle


def c_path(app: Callable, srv: Any, base_envs: list[dict], waiter: Any, resp_class: type,
           log_line: Callable[..., None] | None, forwarded: ProxyTrust | None) -> Callable[..., Any] | None:
    """The C path's ``run(code, poll_ms, green)`` (csrc/py/runner.c), or None where it is not in
    use (``Runner`` is None: PyPy, SPAWNING_NO_PYFAST=1). Its callables close over what they need,
    never over the Handler, so that the Runner and the Handler hold no cycle."""
    if Runner is None:
        return None

    def new_input(resp: Response, head: bytes = b"") -> Input:
        return Input(srv, resp, waiter, head)

    def close_error(exc: BaseException) -> None:
        log.error("error closing the WSGI app's iterable", exc_info=exc)

    def log_safe(env: dict, status: str | None, sent: int, headers: Any = None) -> None:
        try:
            log_line(env, status, sent, headers)   # type: ignore[misc]
        except Exception:   # nothing may stop the handler going on: C handed it its next request
            log.exception("error writing the access log")

    return Runner(int(ffi.cast("uintptr_t", srv)), app, new_input, resp_class,
                  log_safe if log_line is not None else None, base_envs or [{}], EMPTY_INPUT,
                  forwarded.apply if forwarded is not None else None, (FileWrapper,),
                  close_error).run


class Handler:
    """One server's request handler (see the module docstring); ``handle`` is what the
    dispatchers call."""

    __slots__ = ("Resp", "app", "base_envs", "fast", "forwarded", "log_line", "poll_ms", "srv", "waiter")

    def __init__(self, app: Callable, srv: Any, base_envs: list[dict], waiter: Any,
                 access_log: AccessLog | None, poll_ms: int = -1,
                 forwarded: ProxyTrust | None = None) -> None:
        # The hot calls take a plain pointer: cffi checks an ffi.gc() object as an argument more
        # slowly. Resp.owner (below) keeps the owning object for what may outlive a request.
        owner = srv
        srv = ffi.cast("sp_server *", owner)
        self.app = app
        self.srv = srv
        self.base_envs = base_envs
        self.waiter = waiter
        self.poll_ms = poll_ms
        self.forwarded = forwarded
        logging_on = access_log is not None and access_log.enabled
        self.log_line = access_log.log if access_log is not None and logging_on else None

        class Resp(Response):
            __slots__ = ()

        Resp.srv = srv          # the plain pointer, for the write paths too...
        Resp.owner = owner      # ...valid while any response (or wsgi.input, which holds one) lives
        Resp.waiter = waiter
        self.Resp = Resp
        self.fast = c_path(app, srv, base_envs, waiter, Resp, self.log_line, forwarded)

    def handle(self, code: int, take_next: Callable[[], int] | None = None,
               green: tuple | None = None) -> int:
        """Runs the request ``code`` names, then each next one its answer or ``take_next`` brings
        (see make_handler); returns when there is none."""
        # One call for the thread's whole run of requests (in thread mode, each answer takes the
        # next request), and on CPython the C path runs most of them without coming back here.
        # A request greenlet's tuple is the C path's as it stands (spawning.green.hub).
        cgreen = green if green is not None and take_next is not None else None
        # The C path polls itself where take_next would (thread mode), or takes the batch's next
        # code as below (green), else returns 0 for it.
        poll = self.poll_ms if take_next is not None and green is None else -1
        fast = self.fast
        while True:
            if not code:            # the last request brought no next one (a truth test is
                                    # cheaper than a comparison on a big int)
                code = self._next_request(take_next, green)
                if code <= 0:       # none (green mode), or the poll's timeout or error (threads)
                    return code
            handoff = None
            if fast is not None:
                # The request runs in C if its environ is known, with any next ones (see
                # csrc/py/runner.c); what it cannot finish comes back, as a code to run from the
                # start or as the state just after the app call.
                r = fast(code, poll, cgreen)
                if type(r) is not int:
                    handoff, r = r, None    # a Handoff: the request as C left it
                elif r > 0:
                    code = r                # to run from the start, here
                elif poll >= 0 or cgreen is not None:
                    # No next request: as take_next would have said (green: C took the batch's
                    # codes and reset the greenlet's state, as _next_request would, till none was left)
                    return r
                else:
                    code = 0
                    continue
            code = self._run(code, handoff)
            handoff = None          # what it holds (the app's result) must not outlive its request

    def _next_request(self, take_next: Callable[[], int] | None, green: tuple | None) -> int:
        """The next request's code from ``take_next``, or what to return when there is none."""
        if take_next is None:
            return 0
        if green is not None:
            # A request greenlet (spawning.green) goes on with the poll batch's next request, as
            # the hub would have by switching to an idle greenlet, minus two switches. What the
            # request left behind must not reach the next one: greenlet-locals (kept in the
            # greenlet's __dict__) and contextvars.
            me, mine, batch = green[0], green[1], green[2]
            if mine:
                mine.clear()
            if me.gr_context is not None:   # reading it costs less than setting it
                me.gr_context = None
            if not batch:
                return 0
        return take_next()

    def _run(self, code: int, handoff: Any) -> int:
        """Runs one request, from the start or from where the C path left it (``handoff``), and
        returns the next request's code when its answer took one (thread mode), else 0.
        ``resp.code`` says whether the request is still ours: 0 once C has it back (answered or
        cut), so that a write() the app kept fails instead of reaching a later request."""
        exc = taken = rest = answered = result = None
        handed = handoff is not None
        if handed:
            code, env, resp, result, exc, answered, inp, taken, rest = handoff
            handoff = None
        else:
            resp = self.Resp()
            env, has_body = request_environ(self.srv, code, self.base_envs, self.forwarded)
            if has_body:
                # It may outlive the request: its resp keeps the server (Resp.owner).
                env["wsgi.input"] = inp = Input(self.srv, resp, self.waiter)
            else:
                inp = None
            resp.code = code
        # nxt stays 0 on every exit below: only a request taken at once sets it (> 0), and
        # nothing is raised after that.
        nxt = 0
        try:
            if taken is not None or rest is not None:
                # C streamed part of the body: the rest, as stream() would have gone on
                resp.stream(result, chain(taken or (), rest or ()), exc,
                            answered if answered is not None and answered > 0 else 0)
                exc = None
            else:
                if exc is not None:
                    if result is not None:    # iter() or next() raised in C
                        resp.stream(result, (), exc)
                    raise exc
                if not handed:
                    result = self.app(env, resp.start_response)
                nxt = resp.send_result(code, result, answered)
        except ClientDisconnected:
            self._client_gone(resp)
        except BodyError as e:
            self._body_rejected(resp, e)
        except Exception:
            log.exception("error in WSGI app for %s %s", env.get("REQUEST_METHOD"), env.get("RAW_URI"))
            self._app_failed(resp)
        except GeneratorExit:
            self._ended_by_drain(resp)
        except BaseException:
            self._interrupted(resp)
            raise
        finally:
            exc = None          # its traceback holds this frame
            if inp is not None:
                inp.release()
        if self.log_line is not None:
            self._log(env, resp, nxt)
        return nxt

    # ---- the ways a request ends early ------------------------------------------------------

    def _client_gone(self, resp: Response) -> None:
        """The client went away (or the request is over): C gets the connection back, cut."""
        if resp.code:
            lib.sp_req_finish(self.srv, resp.take(), 1)

    def _body_rejected(self, resp: Response, e: BodyError) -> None:
        """The request body broke the rules: the status it names, if nothing went out yet."""
        log.info("request body rejected: %s", e)
        resp.fail(f"{e.status} {'Content Too Large' if e.status == 413 else 'Bad Request'}",
                  (str(e) + "\n").encode())

    def _app_failed(self, resp: Response) -> None:
        """The app (or its iterable) raised, and the error was logged with its traceback: a 500
        if nothing went out yet, else the connection is cut."""
        if resp.code:
            resp.fail()

    def _ended_by_drain(self, resp: Response) -> None:
        """GeneratorExit: a draining green worker ended a request that outlived --stream-grace
        (spawning.green, Hub.end_requests): a clean end, not an app error. Nothing sent yet (a
        long poll): 503, which such clients retry; a stream that had begun (SSE) ends with its
        last chunk, and an EventSource reconnects, to a live worker."""
        if resp.code:
            if resp.head_sent:
                lib.sp_req_finish(self.srv, resp.take(), 0)
            else:
                resp.fail("503 Service Unavailable", SHUTTING_DOWN)

    def _interrupted(self, resp: Response) -> None:
        """GreenletExit, SystemExit, KeyboardInterrupt: they go up, but the request ends here
        all the same, so C gets its connection back: a 500 if nothing went out yet, else cut."""
        if resp.code:
            resp.fail()

    def _log(self, env: dict, resp: Response, nxt: int) -> None:
        """Writes the request's access log line. Nothing may stop the handler returning ``nxt``:
        C handed that request to it."""
        try:
            self.log_line(env, resp.status, resp.sent, resp.headers)   # type: ignore[misc]
        except Exception:
            log.exception("error writing the access log")
        except BaseException:
            # KeyboardInterrupt, SystemExit go up; the request the answer took for this thread
            # will not run, so C gets it back answered rather than busy forever.
            if nxt > 0:
                lib.sp_code_respond(self.srv, nxt, ERR_HEAD, len(ERR_HEAD), INTERNAL_ERROR,
                                    len(INTERNAL_ERROR))
            raise
