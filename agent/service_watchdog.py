"""Pings systemd's watchdog only while the agent's stages are healthy (issue 17, item 1).

A watchdog pinged by a thread of its own proves only that the process is alive. This one asks
`check()` first: the daemon's check lists the stages that have stalled (a forwarder, listener
or acquisition loop that stopped coming round). While it lists any, no `WATCHDOG=1` is sent
and `STATUS=` names them, so `systemctl status` says why, and systemd restarts the service
after `WatchdogSec=` (`Restart=on-failure` covers a watchdog timeout). When the list is empty
again before then, the pings resume.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from agent.errors import ConfigError
from agent.sdnotify import NotifyError, notify

logger = logging.getLogger(__name__)

STATUS_HEALTHY = "STATUS=running"


class ServiceWatchdog:
    """A thread that sends `WATCHDOG=1` every `interval_s / 2` while `check()` returns [].

    Parameters
    ----------
    check
        Returns the current problems, one short line each, no patient data (they go to
        systemd's status and the journal); [] when every stage is healthy. Called on this
        thread: it must be quick and thread-safe. An exception from it counts as a problem.
    interval_s
        The watchdog timeout (`sdnotify.watchdog_interval_s()`); pings go at half of it, as
        sd_watchdog_enabled(3) advises, so one late ping does not cost a restart.
    """

    def __init__(self, check: Callable[[], list[str]], interval_s: float) -> None:
        if not interval_s > 0:
            raise ConfigError([f"ServiceWatchdog: interval_s: expected > 0 s, got {interval_s!r}"])
        self._check = check
        self.period_s = interval_s / 2
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.problems: list[str] = []   # what stopped the pings, [] while pinging

    def start(self) -> None:
        """Start pinging (the first check runs at once)."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="service-watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop pinging and wait for the thread (at most one `check()` call)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.period_s + 5)

    def _run(self) -> None:
        while True:
            self.beat()
            if self._stop.wait(self.period_s):
                return

    def beat(self) -> None:
        """One round: check, then ping or report. Public for the thread and the tests."""
        problems = self._current_problems()
        try:
            if problems:
                if problems != self.problems:
                    logger.warning("watchdog pings stopped: %s", "; ".join(problems))
                    notify("STATUS=stalled: " + "; ".join(problems))
            else:
                if self.problems:
                    logger.warning("watchdog pings resumed")
                    notify(STATUS_HEALTHY, "WATCHDOG=1")
                else:
                    notify("WATCHDOG=1")
        except NotifyError as err:
            # the next round tries again; systemd restarts us if the socket stays broken
            logger.error("%s", err)
        self.problems = problems

    def _current_problems(self) -> list[str]:
        try:
            return [" ".join(p.splitlines()) for p in self._check()]
        except Exception as err:  # noqa: BLE001 - a failing check must stop the pings, not us
            return [f"watchdog check failed: {type(err).__name__}: {err}"]


__all__ = ["ServiceWatchdog"]
