"""Open a local HTML file in headless Chromium and report what a user's browser would show.

Talks the DevTools protocol over ``--remote-debugging-pipe`` (file descriptors
3 and 4, NUL-separated JSON; what Playwright uses), so no websocket client or
driver package is needed. The screenshot is taken with ``--screenshot``.
Only the local file is loaded: every request the page makes is recorded, and
the background-networking features are off.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import tempfile
import time
from pathlib import Path

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-extensions", "--hide-scrollbars"]

# What the page looks like once loaded: broken images, plots, scripts, the visible text.
PROBE = """JSON.stringify({
  images: document.images.length,
  broken: [...document.images].filter(i => !i.complete || i.naturalWidth === 0).map(i => i.src.slice(0, 80)),
  svgs: document.querySelectorAll('svg').length,
  empty_svgs: [...document.querySelectorAll('figure svg')].filter(s => { const r = s.getBoundingClientRect(); return r.width < 50 || r.height < 50; }).length,
  scripts: document.scripts.length,
  sections: [...document.querySelectorAll('h2')].map(h => h.textContent),
  text: document.body.innerText,
  width: document.documentElement.scrollWidth,
})"""


class Pipe:
    """A DevTools session over the browser's pipe."""

    def __init__(self, proc: subprocess.Popen, to_browser: int, from_browser: int):
        self.proc, self.wfd, self.rfd = proc, to_browser, from_browser
        self.buf = b""
        self.next_id = 0
        self.events: list[dict] = []

    def _read(self, deadline: float) -> dict:
        while b"\0" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.rfd], [], [], left)[0]:
                raise TimeoutError("chromium did not answer")
            chunk = os.read(self.rfd, 1 << 16)
            if not chunk:
                raise EOFError("chromium closed the pipe")
            self.buf += chunk
        msg, self.buf = self.buf.split(b"\0", 1)
        return json.loads(msg)

    def call(self, method: str, session: str | None = None, timeout: float = 30, **params) -> dict:
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params} | ({"sessionId": session} if session else {})
        os.write(self.wfd, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read(deadline)
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_event(self, method: str, timeout: float = 30) -> dict:
        deadline = time.monotonic() + timeout
        for e in self.events:
            if e.get("method") == method:
                return e
        while True:
            e = self._read(deadline)
            self.events.append(e)
            if e.get("method") == method:
                return e


def inspect(browser: str, page: Path, timeout: float = 60, extra: str | None = None) -> dict:
    """Load ``page``; return the probe's findings plus ``errors`` (console errors, exceptions) and ``requests``;
    with ``extra`` (a JavaScript expression), its JSON-serialisable value as ``extra``."""
    to_r, to_w = os.pipe()
    from_r, from_w = os.pipe()

    def child_fds():  # dup2 onto itself keeps close-on-exec, hence set_inheritable
        os.dup2(to_r, 3)
        os.dup2(from_w, 4)
        os.set_inheritable(3, True)
        os.set_inheritable(4, True)

    with tempfile.TemporaryDirectory(prefix="tbdprof-chromium-") as profile:
        proc = subprocess.Popen([browser, *FLAGS, f"--user-data-dir={profile}", "--remote-debugging-pipe", "about:blank"],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                preexec_fn=child_fds, close_fds=False)
        os.close(to_r)
        os.close(from_w)
        cdp = Pipe(proc, to_w, from_r)
        try:
            target = cdp.call("Target.createTarget", url="about:blank", timeout=timeout)["targetId"]
            session = cdp.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
            for domain in ("Runtime", "Log", "Page", "Network"):
                cdp.call(f"{domain}.enable", session)
            cdp.call("Page.navigate", session, url=page.resolve().as_uri())
            cdp.wait_event("Page.loadEventFired", timeout)
            found = json.loads(cdp.call("Runtime.evaluate", session, expression=PROBE, returnByValue=True)["result"]["value"])
            if extra:
                found["extra"] = json.loads(cdp.call("Runtime.evaluate", session, expression=f"JSON.stringify({extra})",
                                                     returnByValue=True)["result"]["value"])
            try:
                cdp.call("Browser.close", timeout=5)
            except (EOFError, TimeoutError):
                pass
        finally:
            os.close(to_w)
            os.close(from_r)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    errors = []
    for e in cdp.events:
        method, p = e.get("method"), e.get("params", {})
        if method == "Runtime.exceptionThrown":
            errors.append(p["exceptionDetails"].get("text", "exception"))
        elif method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            errors.append(" ".join(str(a.get("value", a.get("description"))) for a in p.get("args", [])))
        elif method == "Log.entryAdded" and p["entry"].get("level") == "error":
            errors.append(p["entry"].get("text", ""))
    requests = [e["params"]["request"]["url"] for e in cdp.events if e.get("method") == "Network.requestWillBeSent"]
    return found | {"errors": errors, "requests": requests}


def screenshot(browser: str, page: Path, out: Path, size: str = "1280,5200", timeout: float = 60) -> Path:
    """Take a screenshot of ``page`` into ``out`` (PNG) with ``--screenshot``."""
    with tempfile.TemporaryDirectory(prefix="tbdprof-chromium-") as profile:
        subprocess.run([browser, *FLAGS, f"--user-data-dir={profile}", f"--screenshot={out}", f"--window-size={size}",
                        page.resolve().as_uri()], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       timeout=timeout, check=True)
    return out
