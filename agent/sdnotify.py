"""systemd's service notification protocol (sd_notify(3)), with the standard library only.

Under `Type=notify` systemd passes a datagram socket in `$NOTIFY_SOCKET` and waits for
`READY=1` before it calls the service started; with `WatchdogSec=` it also passes
`$WATCHDOG_USEC` and restarts the service when `WATCHDOG=1` stops arriving. Outside systemd
(a terminal, the tests, `demo`) the variable is absent and every call here is a no-op, so the
daemon calls it unconditionally. libsystemd is not used: it would be a C dependency for
twenty lines of protocol.
"""

from __future__ import annotations

import logging
import os
import socket

from agent.errors import AgentError, ConfigError

logger = logging.getLogger(__name__)


class NotifyError(AgentError, OSError):
    """`$NOTIFY_SOCKET` is set but the message could not be delivered to it."""


def _socket_address(notify_socket: str) -> str:
    """The `connect()` address for `$NOTIFY_SOCKET`: a path, or "@name" for a socket in the
    abstract namespace, which Linux spells with a leading NUL byte (unix(7))."""
    if notify_socket.startswith("@"):
        return "\0" + notify_socket[1:]
    return notify_socket


def notify(*states: str) -> bool:
    """Send `states` (e.g. "READY=1", "STATUS=forwarding") to systemd in one datagram.

    Parameters
    ----------
    *states
        `KEY=value` assignments from sd_notify(3). A newline inside one would start another
        assignment, so a value such as a status text must not contain one (it is replaced by
        a space here: a status text must never be able to say "READY=1").

    Returns
    -------
    bool
        True if sent; False if `$NOTIFY_SOCKET` is unset or empty (not run by systemd).

    Raises
    ------
    NotifyError
        If the socket is set but unusable (missing, refused, not a datagram socket): under
        systemd that means READY or the watchdog pings would never arrive.
    """
    notify_socket = os.environ.get("NOTIFY_SOCKET", "")
    if not notify_socket:
        return False
    if not notify_socket.startswith(("/", "@")):
        # systemd >= 254 may also pass "vsock:..." (a VM's manager): not a local service's case
        raise NotifyError(f"NOTIFY_SOCKET={notify_socket!r}: expected a path or @abstract name")
    message = "\n".join(" ".join(state.splitlines()) for state in states).encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(_socket_address(notify_socket))
            sock.sendall(message)
    except OSError as err:
        raise NotifyError(f"cannot notify systemd at NOTIFY_SOCKET={notify_socket!r}: "
                          f"{err.strerror or err}") from err
    logger.debug("sd_notify: %s", message.decode(errors="replace").replace("\n", " "))
    return True


def watchdog_interval_s() -> float | None:
    """The watchdog timeout systemd expects pings within (`WatchdogSec=`), or None.

    None when `$WATCHDOG_USEC` is unset, or when `$WATCHDOG_PID` is set and names another
    process (the variables were inherited by a child; sd_watchdog_enabled(3)). systemd sets
    `$WATCHDOG_PID` to the main PID; it may be absent, which means "this process".

    Raises
    ------
    ConfigError
        If `$WATCHDOG_USEC` or `$WATCHDOG_PID` is not a positive integer.
    """
    usec_text = os.environ.get("WATCHDOG_USEC", "")
    if not usec_text:
        return None
    pid_text = os.environ.get("WATCHDOG_PID", "")
    if pid_text:
        if not pid_text.isdigit() or int(pid_text) <= 0:
            raise ConfigError([f"environment: WATCHDOG_PID: expected a process id, "
                               f"got {pid_text!r}"])
        if int(pid_text) != os.getpid():
            return None
    if not usec_text.isdigit() or int(usec_text) <= 0:
        raise ConfigError([f"environment: WATCHDOG_USEC: expected a positive integer "
                           f"(microseconds), got {usec_text!r}"])
    return int(usec_text) / 1_000_000


__all__ = ["NotifyError", "notify", "watchdog_interval_s"]
