"""What makes the controller a well-behaved daemon, apart from supervising workers: the pid file,
daemonizing (double fork), dropping privileges after binding, and systemd's readiness protocol
(``sd_notify``). The controller calls these; each does one thing to the process and nothing else.
"""

from __future__ import annotations

import logging
import os
import socket
import sys

from ..errors import EXIT_FAILURE, Halt

log = logging.getLogger("spawning")

__all__ = ["Pidfile", "daemonize", "drop_privileges", "sd_notify"]


def sd_notify(message: str) -> None:
    """Sends a readiness message to systemd (``NOTIFY_SOCKET``); does nothing without it.

    Never blocks: a receiver whose queue is full (one that does not read) loses the message rather
    than stopping the controller's loop.
    """
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return
    if path.startswith("@"):
        path = "\0" + path[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.setblocking(False)
            sock.connect(path)
            sock.send(message.encode())
    except OSError as exc:
        log.debug("sd_notify(%r) failed: %s", message, exc)


class Pidfile:
    """A pid file that refuses to be taken over from a live process."""

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)
        self.pid: int | None = None

    def check(self) -> None:
        """Raises ``Halt(1)`` if the file names a live process other than this one."""
        try:
            with open(self.path) as f:
                text = f.read().strip()
        except FileNotFoundError:
            return
        except OSError as exc:
            raise Halt(EXIT_FAILURE, f"spawning: cannot read pid file {self.path}: {exc.strerror}")
        try:
            pid = int(text)
        except ValueError:
            return  # garbage: not a live server's
        if pid == os.getpid() or pid <= 0:
            return
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        except PermissionError:
            pass  # alive, owned by someone else
        raise Halt(EXIT_FAILURE, f"spawning: pid file {self.path} names a running process ({pid}); "
                                 "is another server running?")

    def create(self, pid: int) -> None:
        self.check()
        tmp = f"{self.path}.{pid}.tmp"
        try:
            with open(tmp, "w") as f:
                f.write(f"{pid}\n")
            os.replace(tmp, self.path)
        except OSError as exc:
            raise Halt(EXIT_FAILURE, f"spawning: cannot write pid file {self.path}: {exc.strerror}")
        self.pid = pid

    def unlink(self) -> None:
        """Removes the file if it still holds our pid."""
        if self.pid is None:
            return
        try:
            with open(self.path) as f:
                if int(f.read().strip() or 0) != self.pid:
                    return
            os.unlink(self.path)
        except (OSError, ValueError):
            pass


def drop_privileges(user: str | None, group: str | None) -> None:
    """Switches to ``group`` then ``user`` (names or numbers); raises ``Halt(1)`` on failure."""
    if not user and not group:
        return
    import grp
    import pwd

    uid = gid = None
    try:
        if user:
            entry = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
            uid, gid = entry.pw_uid, entry.pw_gid
    except KeyError:
        raise Halt(EXIT_FAILURE, f"spawning: no such user: {user!r}") from None
    try:
        if group:
            gid = int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
    except KeyError:
        raise Halt(EXIT_FAILURE, f"spawning: no such group: {group!r}") from None
    try:
        if (gid is not None and os.getegid() != gid) or (uid is not None and os.geteuid() != uid):
            if gid is not None:
                if os.geteuid() == 0:
                    if user and not user.isdigit():
                        os.initgroups(user, gid)
                    else:
                        os.setgroups([gid])
                os.setgid(gid)
            if uid is not None:
                os.setuid(uid)
    except OSError as exc:
        raise Halt(EXIT_FAILURE, f"spawning: cannot switch to user {user or '-'} / group "
                                 f"{group or '-'}: {exc.strerror}") from None


def daemonize(stdout: str | None, stderr: str | None) -> None:
    """Detaches from the terminal (double fork, new session); standard streams go to the given files
    (appended) or /dev/null. The working directory is kept: the application is imported from it."""
    if os.fork():
        os._exit(0)
    os.setsid()
    if os.fork():
        os._exit(0)
    sys.stdout.flush()
    sys.stderr.flush()
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    for target, fd in ((stdout, 1), (stderr, 2)):
        if target:
            out = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            os.dup2(out, fd)
            os.close(out)
        else:
            os.dup2(devnull, fd)
    os.close(devnull)
