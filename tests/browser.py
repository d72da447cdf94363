"""Headless Chromium driven over the W3C WebDriver protocol, for the `cnnc view` tests.

Debian's `chromium` and `chromium-driver` packages; the protocol is JSON over HTTP, so the
standard library's urllib is the whole client (no Selenium, no websocket library).

    python tests/browser.py OUT.png [PAGE.html [LAYER]]   # the screenshot in docs/img/
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ELEMENT = "element-6066-11e4-a52e-4f735466cecf"  # the W3C key of an element reference
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def find_chromium() -> tuple[str, str] | None:
    """(browser, driver) paths, or None where either is missing."""
    driver = shutil.which("chromedriver")
    browser = next(
        (
            p
            for p in ("/usr/lib/chromium/chromium", shutil.which("chromium"))
            if p and os.access(p, os.X_OK)
        ),
        None,
    )
    return (browser, driver) if browser and driver else None


class WebDriverError(RuntimeError):
    pass


class Browser:
    """One headless Chromium window of ``width`` x ``height`` CSS pixels."""

    def __init__(self, width: int = 1400, height: int = 900):
        found = find_chromium()
        if found is None:
            raise WebDriverError("chromium and chromedriver are not installed")
        browser, driver = found
        self.profile = tempfile.mkdtemp(prefix="cnnc-chromium-")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.base = f"http://127.0.0.1:{port}"
        self.driver = subprocess.Popen(
            [driver, f"--port={port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        self.session = None
        try:
            self._wait_ready()
            args = [*FLAGS, f"--user-data-dir={self.profile}", f"--window-size={width},{height}"]
            options = {"binary": browser, "args": args}
            caps = {"browserName": "chrome", "goog:chromeOptions": options}
            reply = self._call("POST", "/session", {"capabilities": {"alwaysMatch": caps}})
            self.session = reply["sessionId"]
        except BaseException:
            self.close()
            raise

    def _wait_ready(self, timeout: float = 30.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self._call("GET", "/status").get("ready"):
                    return
            except (OSError, WebDriverError):
                pass
            time.sleep(0.1)
        raise WebDriverError("chromedriver did not start")

    def _call(self, method: str, path: str, body: dict | None = None):
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.base + path, data, {"Content-Type": "application/json"}, method=method
        )
        try:
            with urllib.request.urlopen(request, timeout=120) as reply:
                value = json.load(reply)["value"]
        except urllib.error.HTTPError as exc:
            value = json.load(exc)["value"]
            message = value.get("message", "")[:500]
            raise WebDriverError(f"{value.get('error')}: {message}") from None
        return value

    def _session(self, method: str, path: str, body: dict | None = None):
        return self._call(method, f"/session/{self.session}{path}", body)

    def open(self, path: Path):
        """Load a local file and wait for its load event."""
        self._session("POST", "/url", {"url": Path(path).resolve().as_uri()})

    def run(self, script: str, *args):
        """Run ``script`` (a function body; ``return`` gives the result) in the page."""
        return self._session("POST", "/execute/sync", {"script": script, "args": list(args)})

    def find(self, css: str) -> dict:
        return self._session("POST", "/element", {"using": "css selector", "value": css})

    def click(self, element: dict):
        """A real click: the driver moves the mouse to the element's centre and presses."""
        self._session("POST", f"/element/{element[ELEMENT]}/click", {})

    def drag(self, element: dict, dx: int, dy: int):
        """Press on the element's centre, move by (dx, dy), release."""
        steps = [
            {"type": "pointerMove", "origin": element, "x": 0, "y": 0},
            {"type": "pointerDown", "button": 0},
            {"type": "pointerMove", "origin": "pointer", "x": dx, "y": dy, "duration": 150},
            {"type": "pointerUp", "button": 0},
        ]
        pointer = {"type": "pointer", "id": "mouse", "parameters": {"pointerType": "mouse"}}
        self._session("POST", "/actions", {"actions": [{**pointer, "actions": steps}]})
        self._session("DELETE", "/actions")

    def wheel(self, element: dict, dy: int):
        """Turn the mouse wheel over the element's centre (negative ``dy``: away, zoom in)."""
        scroll = {"type": "scroll", "origin": element, "x": 0, "y": 0, "deltaX": 0, "deltaY": dy}
        wheel = {"type": "wheel", "id": "wheel", "actions": [scroll]}
        self._session("POST", "/actions", {"actions": [wheel]})
        self._session("DELETE", "/actions")

    def screenshot(self) -> bytes:
        return base64.b64decode(self._session("GET", "/screenshot"))

    def close(self):
        try:
            if self.session:
                self._session("DELETE", "")
        except (OSError, WebDriverError):
            pass
        self.driver.terminate()
        try:
            self.driver.wait(10)
        except subprocess.TimeoutExpired:
            self.driver.kill()
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def screenshot(out: str, page: Path, layer: str):
    """The README's picture: ``page`` (written by ``cnnc view``) with ``layer`` selected by a
    click on its row."""
    with Browser() as b:
        b.open(page)
        i = b.run("return window.cnncView.layers.findIndex(x => x.name === arguments[0])", layer)
        if i < 0:
            raise SystemExit(f"{page} has no layer {layer}")
        b.run(
            "document.querySelector(`#layers tbody tr[data-i='${arguments[0]}']`)"
            ".scrollIntoView({block: 'center'})",
            i,
        )
        b.click(b.find(f'#layers tbody tr[data-i="{i}"]'))
        Path(out).write_bytes(b.screenshot())


if __name__ == "__main__":
    out, *rest = sys.argv[1:] or ["view.png"]
    page, layer = (rest + ["layer2.basic_down/y.conv1"])[:2] if rest else (None, None)
    with tempfile.TemporaryDirectory() as tmp:
        if page is None:  # ResNet-18 (a relative spec path shows as written)
            import cnnc
            from cnnc.compiler.view import write

            page = write(cnnc.load("specs/resnet.cnn", network="resnet18"), Path(tmp) / "v.html")
            layer = "layer2.basic_down/y.conv1"
        screenshot(out, Path(page), layer)
    print(f"wrote {out}")
