"""A real web browser for tests: headless Chromium loads a page, runs its scripts and hands back
the DOM they left (`--dump-dom`). No driver, no DevTools client, no Python package: the page
itself writes what it saw into the DOM.

Chromium runs as root in CI, so without its sandbox (`--no-sandbox`), and with a fresh profile
per page so that no cookie or cache leaks from one load to the next. `--virtual-time-budget`
lets the page's timers run ahead of the clock, but virtual time stands still while a request
is in flight: the dump comes after every request the page made has been answered.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Sequence

#: Debian's package is `chromium`; other distributions name the binary differently
CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")

#: headless, as root, and quiet: no first-run UI, no calls home that could slow a test down
BASE_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-default-apps", "--disable-extensions", "--mute-audio",
)


class BrowserError(RuntimeError):
    """Chromium failed or did not finish the page in time (its stderr is in the message)."""


def chromium_path() -> str | None:
    """The Chromium executable on PATH, or None if none is installed."""
    for name in CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


def dump_dom(url: str, *, budget_ms: int = 5000, timeout_s: float = 45,
             resolver_rules: str | None = None, extra_flags: Sequence[str] = ()) -> str:
    """Load `url` in a new headless Chromium and return the serialized DOM after its scripts ran.

    `resolver_rules` is Chromium's `--host-resolver-rules`, e.g. "MAP evil.example 127.0.0.1":
    a name the page uses resolves to that address, as a rebinding DNS server would make it.

    Raises
    ------
    BrowserError
        No Chromium installed, it exited with an error, or it did not finish within
        `timeout_s` seconds.
    """
    executable = chromium_path()
    if executable is None:
        raise BrowserError(f"no Chromium on PATH (looked for {', '.join(CANDIDATES)})")
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        command = [executable, *BASE_FLAGS, f"--user-data-dir={profile}",
                   f"--virtual-time-budget={budget_ms}", *extra_flags]
        if resolver_rules:
            command.append(f"--host-resolver-rules={resolver_rules}")
        command += ["--dump-dom", url]
        # its own session: on a timeout the whole process group (renderers, zygote) is killed
        browser = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            stdout, stderr = browser.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired as err:
            os.killpg(browser.pid, signal.SIGKILL)
            browser.communicate()
            raise BrowserError(f"Chromium did not finish {url} within {timeout_s:g} s") from err
    if browser.returncode != 0 or not stdout.strip():
        raise BrowserError(f"Chromium exited with {browser.returncode} on {url} and dumped "
                           f"{len(stdout)} characters; stderr: {stderr[-2000:]}")
    return stdout
