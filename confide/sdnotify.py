"""systemd's notify protocol (``sd_notify(3)``): READY, STATUS, WATCHDOG and STOPPING.

Both daemons run as ``Type=notify`` units: READY=1 is sent only once the daemon really
serves (the aggregator listening with TLS and its state open; the agent's control socket
up), STATUS= says what it is doing, WATCHDOG=1 is sent from the daemon's main loop (so a
stuck loop stops the pings and systemd restarts the unit), and STOPPING=1 starts a clean
shutdown. Outside systemd (``NOTIFY_SOCKET`` unset) every call is a no-op, so the daemons run
the same by hand.

The protocol is one datagram of ``KEY=VALUE`` lines to the unix socket named by
``NOTIFY_SOCKET`` (a path, or ``@name`` for the abstract namespace). Written here rather than
taken from a binding: it is a dozen lines and needs no C library.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["Notifier", "from_environ"]


@dataclass(frozen=True, slots=True)
class Notifier:
    """Sends notify messages to systemd; a Notifier with no address sends nothing.

    Args:
        address: the notify socket (``NOTIFY_SOCKET``), or None outside systemd.
        watchdog_s: the watchdog period (``WATCHDOG_USEC``), or None when not asked for.
    """

    address: str | None = None
    watchdog_s: float | None = None

    def send(self, **fields: str) -> bool:
        """Send ``KEY=VALUE`` lines in one datagram; True when it was sent.

        A failure to reach systemd is not the daemon's failure: it returns False.
        """
        if self.address is None or not fields:
            return False
        target = self.address
        if target.startswith("@"):
            target = "\0" + target[1:]
        payload = "".join(f"{k}={v}\n" for k, v in fields.items()).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
                s.sendto(payload, target)
        except OSError:
            return False
        return True

    def ready(self, status: str) -> bool:
        """The daemon serves: ``READY=1`` with a status line and the main pid."""
        return self.send(READY="1", STATUS=status, MAINPID=str(os.getpid()))

    def status(self, status: str) -> bool:
        """What the daemon is doing now (shown by ``systemctl status``)."""
        return self.send(STATUS=status)

    def stopping(self, status: str = "stopping") -> bool:
        """A clean shutdown has begun."""
        return self.send(STOPPING="1", STATUS=status)

    def watchdog(self) -> bool:
        """The daemon's main loop is alive; sent only when systemd asked for a watchdog.

        Call it from the loop whose progress it vouches for (never from a thread of its own,
        which would keep pinging for a stuck daemon), at least twice per ``watchdog_s``.
        """
        if self.watchdog_s is None:
            return False
        return self.send(WATCHDOG="1")


def from_environ(environ: Mapping[str, str] | None = None) -> Notifier:
    """The notifier systemd set up for this process (``NOTIFY_SOCKET``, ``WATCHDOG_USEC``).

    ``WATCHDOG_PID``, when set, must be this process: a child that inherited the environment
    must not ping for its parent.
    """
    env = os.environ if environ is None else environ
    address = env.get("NOTIFY_SOCKET") or None
    watchdog_s: float | None = None
    usec = env.get("WATCHDOG_USEC")
    pid = env.get("WATCHDOG_PID")
    if usec and (not pid or pid == str(os.getpid())):
        with contextlib.suppress(ValueError):
            value = int(usec)
            if value > 0:
                watchdog_s = value / 1_000_000
    return Notifier(address=address, watchdog_s=watchdog_s)
