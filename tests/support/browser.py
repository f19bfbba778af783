"""A real web browser for tests, without a driver or a Python package. Two ways to use it:

- `dump_dom`: headless Chromium loads a page, runs its scripts and hands back the DOM they left
  (`--dump-dom`); the page itself writes what it saw into the DOM.
- `Page`: a tab to click in, as a person would, over the Chrome DevTools Protocol on
  `--remote-debugging-pipe` (JSON messages on two pipes: no websocket, no port).

Chromium runs as root in CI, so without its sandbox (`--no-sandbox`), and with a fresh profile
per page so that no cookie or cache leaks from one load to the next. `--virtual-time-budget`
lets the page's timers run ahead of the clock, but virtual time stands still while a request
is in flight: the dump comes after every request the page made has been answered.
"""

from __future__ import annotations

import fcntl
import json
import os
import select
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.parse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

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


# -- a page you can click: Chrome DevTools Protocol over --remote-debugging-pipe ------------------
#: Chromium reads DevTools commands from this descriptor and writes answers and events to the
#: next one, each message one JSON text ended by a NUL byte: no websocket, no port to race for
PIPE_IN_FD, PIPE_OUT_FD = 3, 4


class DevToolsError(BrowserError):
    """A DevTools command failed, Chromium closed its pipe, or no answer came in time."""


class DevToolsPipe:
    """The browser end of --remote-debugging-pipe: send a command, wait for its answer; every
    event that arrives meanwhile is kept, in order, in `events` (method, params, sessionId)."""

    def __init__(self, to_browser: int, from_browser: int) -> None:
        self._out = to_browser
        self._in = from_browser
        self._buffer = b""
        self._next_id = 0
        self.events: list[tuple[str, dict[str, Any], str | None]] = []

    def call(self, method: str, params: dict[str, Any] | None = None, *,
             session: str | None = None, timeout_s: float = 30) -> dict[str, Any]:
        """The `result` of one command; DevToolsError with Chromium's own message if it failed."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        data = json.dumps(message).encode() + b"\0"
        while data:
            data = data[os.write(self._out, data):]
        deadline = time.monotonic() + timeout_s
        while True:
            answer = self._receive(deadline, method)
            if answer.get("id") == self._next_id:
                if "error" in answer:
                    raise DevToolsError(f"{method}: {answer['error'].get('message')} "
                                        f"({answer['error'].get('data', '')})")
                result: dict[str, Any] = answer.get("result", {})
                return result
            if "method" in answer:
                self.events.append((answer["method"], answer.get("params", {}),
                                    answer.get("sessionId")))

    def _receive(self, deadline: float, waiting_for: str) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self._in], [], [], max(left, 0))
            if not ready:
                raise DevToolsError(f"{waiting_for}: no answer from Chromium in time")
            chunk = os.read(self._in, 1 << 16)
            if not chunk:
                raise DevToolsError(f"{waiting_for}: Chromium closed its DevTools pipe")
            self._buffer += chunk
        text, self._buffer = self._buffer.split(b"\0", 1)
        message: dict[str, Any] = json.loads(text)
        return message


class Page:
    """One tab of a headless Chromium, driven as a person would: load a URL, type into a field,
    click at the middle of an element (so a hidden, covered or disabled element takes no click),
    read the DOM back with JavaScript. Use as a context manager: leaving it kills every process
    Chromium started (they are all in its own process group) and removes its profile."""

    def __init__(self, *, timeout_s: float = 30, extra_flags: Sequence[str] = ()) -> None:
        executable = chromium_path()
        if executable is None:
            raise BrowserError(f"no Chromium on PATH (looked for {', '.join(CANDIDATES)})")
        self.timeout_s = timeout_s
        self._profile = tempfile.TemporaryDirectory(prefix="chromium-profile-")
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        # bash puts the pipe ends on descriptors 3 and 4, where Chromium looks for them;
        # moved above 9 first, so that neither end already is 3 or 4 (closed by the move)
        to_browser_r, from_browser_w = _above_nine(to_browser_r), _above_nine(from_browser_w)
        command = ["/bin/bash", "-c",
                   f'exec "$@" {PIPE_IN_FD}<&{to_browser_r} {PIPE_OUT_FD}>&{from_browser_w} '
                   f"{to_browser_r}<&- {from_browser_w}>&-", "chromium",
                   executable, *BASE_FLAGS, f"--user-data-dir={self._profile.name}",
                   "--remote-debugging-pipe", *extra_flags, "about:blank"]
        # its own session: on leaving, the whole group (renderers, zygote, GPU) is killed
        self._process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, pass_fds=(to_browser_r, from_browser_w),
            start_new_session=True)
        os.close(to_browser_r)
        os.close(from_browser_w)
        self.devtools = DevToolsPipe(self._to_browser, self._from_browser)
        try:
            self._session = self._attach()
        except BaseException:
            self.close()
            raise

    def _attach(self) -> str:
        target = self.devtools.call("Target.createTarget", {"url": "about:blank"},
                                    timeout_s=self.timeout_s)["targetId"]
        session: str = self.devtools.call("Target.attachToTarget",
                                          {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page.enable", "Runtime.enable", "Network.enable"):
            self.devtools.call(domain, session=session)
        return session

    def __enter__(self) -> Page:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def call(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """A DevTools command to this tab."""
        return self.devtools.call(method, params, session=self._session, timeout_s=self.timeout_s)

    def goto(self, url: str) -> None:
        """Navigate as if typed into the address bar, and wait for the document to be parsed."""
        result = self.call("Page.navigate", {"url": url})
        if result.get("errorText"):
            raise BrowserError(f"{url}: {result['errorText']}")
        self.wait_for("document.readyState !== 'loading'", f"{url} to load")

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (promises are awaited)."""
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                "awaitPromise": True})
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            raise BrowserError(f"{expression!r} threw: "
                               f"{details.get('exception', {}).get('description', details)}")
        return result["result"].get("value")

    def wait_for(self, expression: str, what: str, timeout_s: float | None = None) -> Any:
        """Poll a JavaScript expression until it is truthy; its value. BrowserError naming
        `what` if it is not within `timeout_s` (the page's own timeout by default)."""
        deadline = time.monotonic() + (timeout_s or self.timeout_s)
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() >= deadline:
                raise BrowserError(f"timed out waiting for {what} ({expression} is {value!r})")
            time.sleep(0.05)   # the poll interval, not a synchronisation

    def click(self, selector: str) -> None:
        """A left click with the mouse at the middle of the element `selector` (scrolled into
        view). BrowserError if it is not there, not rendered, or something else is on top of it;
        a disabled button simply ignores the click, as it would for a person."""
        found = self.evaluate(f"""(() => {{
            const node = document.querySelector({json.dumps(selector)});
            if (!node) return "missing";
            node.scrollIntoView({{block: "center"}});
            const box = node.getBoundingClientRect();
            if (!box.width || !box.height) return "not rendered";
            const x = box.left + box.width / 2, y = box.top + box.height / 2;
            const top = document.elementFromPoint(x, y);
            if (top !== node && !node.contains(top)) return "covered by " + (top && top.outerHTML);
            return [x, y];
        }})()""")
        if not isinstance(found, list):
            raise BrowserError(f"cannot click {selector}: {found}")
        x, y = found
        for event in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", {"type": event, "x": x, "y": y,
                                                   "button": "left", "clickCount": 1})

    def type_into(self, selector: str, text: str) -> None:
        """Focus the field `selector`, clear it and type `text` (input events as a keyboard)."""
        self.evaluate(f"(() => {{ const f = document.querySelector({json.dumps(selector)}); "
                      "f.focus(); f.value = ''; })()")
        self.call("Input.insertText", {"text": text})

    def requests(self, path: str) -> list[dict[str, Any]]:
        """Every request the page sent to `path` so far (DevTools' Network.Request records,
        `method`, `url`, `postData`), in order."""
        self.evaluate("0")   # a round trip: events sent before its answer are now collected
        return [params["request"] for method, params, session in self.devtools.events
                if method == "Network.requestWillBeSent" and session == self._session
                and urllib.parse.urlsplit(params["request"]["url"]).path == path]

    def close(self) -> None:
        """Kill Chromium's whole process group, wait until none of it is left, drop the
        profile. Killing is fine: the profile is thrown away and nothing is saved."""
        for fd in (self._to_browser, self._from_browser):
            try:
                os.close(fd)
            except OSError:
                pass
        try:
            os.killpg(self._process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self._process.wait(timeout=10)
        deadline = time.monotonic() + 10
        while session_members(self._process.pid):
            if time.monotonic() >= deadline:
                raise BrowserError(f"Chromium processes {session_members(self._process.pid)} "
                                   "outlived the kill")
            time.sleep(0.05)   # the poll interval, not a synchronisation
        self._profile.cleanup()


def _above_nine(fd: int) -> int:
    """`fd` moved to a free descriptor above 9, from where bash redirects it onto 3 or 4."""
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return moved


def session_members(session_id: int) -> list[int]:
    """Live (not zombie) processes in the session `session_id`, from /proc."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(") ", 1)[1].split()
        except (OSError, IndexError):
            continue
        # after "pid (comm) ": state ppid pgrp session
        if int(fields[3]) == session_id and fields[0] != "Z":
            members.append(int(entry))
    return members
