"""Headless Chromium for the browser tests: a screenshot and the DOM after a page has settled.

`chromium --headless --screenshot` shoots at the load event, before a single-page app such as
Model Explorer has fetched and drawn its graph; so this drives Chromium over the DevTools
protocol instead, waiting until the page's text contains what the test expects (or a limit).
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

__all__ = ["CHROMIUM", "Page", "open_page"]

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
FLAGS = ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--hide-scrollbars", "--no-first-run",
         "--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--window-size=1400,900"]


class Page:
    """One Chromium tab over the DevTools protocol (websocket-client)."""

    def __init__(self, ws):
        self._ws, self._id = ws, 0

    def call(self, method: str, **params):
        self._id += 1
        self._ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:
            msg = json.loads(self._ws.recv())
            if msg.get("id") == self._id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    def evaluate(self, expression: str):
        return self.call("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

    def dom(self) -> str:
        return self.evaluate("document.documentElement.outerHTML") or ""

    def wait_for_text(self, needles, limit: float = 60.0) -> bool:
        """Until every needle is in the page's DOM (True) or `limit` seconds pass (False)."""
        end = time.monotonic() + limit
        while time.monotonic() < end:
            html = self.dom()
            if all(n in html for n in needles):
                return True
            time.sleep(0.5)
        return False

    def screenshot(self, path: Path) -> Path:
        data = self.call("Page.captureScreenshot", format="png")["data"]
        Path(path).write_bytes(base64.b64decode(data))
        return Path(path)


class open_page:
    """Context manager: Chromium started on `url`, yielding a Page; the browser is stopped on exit."""

    def __init__(self, url: str):
        self.url = url

    def __enter__(self) -> Page:
        import websocket

        self._profile = tempfile.mkdtemp(prefix="slimc-chromium-")
        self._proc = subprocess.Popen([CHROMIUM, *FLAGS, "--remote-debugging-port=0",
                                       f"--user-data-dir={self._profile}", self.url],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = Path(self._profile) / "DevToolsActivePort"
        end = time.monotonic() + 60
        while not port_file.is_file() or not port_file.read_text().strip():
            if time.monotonic() > end or self._proc.poll() is not None:
                self.__exit__()
                raise RuntimeError("Chromium did not open its DevTools port")
            time.sleep(0.2)
        port = int(port_file.read_text().split()[0])
        tabs = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10).read())
        page = next(t for t in tabs if t.get("type") == "page")
        self._ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=60, suppress_origin=True)
        return Page(self._ws)

    def __exit__(self, *exc):
        if getattr(self, "_ws", None) is not None:
            self._ws.close()
        self._proc.terminate()
        try:
            self._proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self._proc.kill()
        shutil.rmtree(self._profile, ignore_errors=True)
