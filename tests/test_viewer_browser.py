"""The HTML viewer in a real headless browser (Chromium, driven over the DevTools protocol with a stdlib
websocket client): the page loads from disk without console errors, draws a non-blank canvas, and clicking a
colouring button (or `#mode=` in the URL) changes the canvas, where the predictions differ from the ground
truth. Screenshots are saved under the test's tmp folder. Skips with a reason when Chromium is missing
(`tools/setup_browser.sh` installs it on Debian).
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from volt.viz import color_labels, instance_colors, palette
from volt.viz.html import write_viewer
from volt.viz.render import error_colors

BACKGROUND = np.array([30, 31, 34])  # the page's clear colour (#1e1f22)


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("no Chromium on PATH (run tools/setup_browser.sh, or apt-get install chromium)")


class WebSocket:
    """Just enough RFC 6455 for the DevTools protocol: masked text frames out, (fragmented) frames in."""

    def __init__(self, url: str, timeout: float = 30.0):
        rest = url.split("://", 1)[1]
        hostport, path = rest.split("/", 1)
        host, port = hostport.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET /{path} HTTP/1.1\r\nHost: {hostport}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                           f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += self.sock.recv(1)
        assert b" 101 " in head.split(b"\r\n")[0], head

    def _read(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("websocket closed")
            buf += chunk
        return bytes(buf)

    def send(self, text: str, opcode: int = 0x1) -> None:
        data = text.encode() if isinstance(text, str) else text
        n = len(data)
        head = bytes([0x80 | opcode]) + (bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + n.to_bytes(2, "big")
                                         if n < 65536 else bytes([0x80 | 127]) + n.to_bytes(8, "big"))
        mask = os.urandom(4)
        body = (np.frombuffer(data, np.uint8) ^ np.resize(np.frombuffer(mask, np.uint8), n)).tobytes()
        self.sock.sendall(head + mask + body)

    def recv(self) -> str:
        message = bytearray()
        while True:
            b0, b1 = self._read(2)
            n = b1 & 0x7F
            n = int.from_bytes(self._read(2 if n == 126 else 8), "big") if n >= 126 else n
            payload = self._read(n)
            opcode = b0 & 0x0F
            if opcode == 0x8:
                raise ConnectionError("websocket closed by the browser")
            if opcode == 0x9:
                self.send(payload, 0xA)  # pong
                continue
            message += payload
            if b0 & 0x80:
                return message.decode()


class Browser:
    """Headless Chromium with one page; `events` collects what the page reports (console, exceptions)."""

    def __init__(self, exe: str, profile: Path):
        self.log = open(profile.parent / "chromium.log", "w")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            [exe, "--headless", "--no-sandbox", "--enable-unsafe-swiftshader", "--hide-scrollbars", "--no-first-run",
             "--window-size=900,650", f"--user-data-dir={profile}", "--remote-debugging-port=0", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=self.log)
        port_file, deadline = profile / "DevToolsActivePort", time.time() + 30
        while not (port_file.is_file() and port_file.read_text().strip()):
            if self.proc.poll() is not None or time.time() > deadline:
                self.close()
                pytest.skip(f"Chromium did not start; see {self.log.name}")
            time.sleep(0.1)
        port = port_file.read_text().split()[0]
        targets = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10).read())
        page = next(t for t in targets if t["type"] == "page")
        self.ws, self.next_id, self.events = WebSocket(page["webSocketDebuggerUrl"]), 0, []
        for domain in ("Runtime", "Log", "Page"):
            self.call(f"{domain}.enable")

    def call(self, method: str, **params) -> dict:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self.next_id:
                assert "error" not in msg, msg["error"]
                return msg.get("result", {})
            self.events.append(msg)

    def evaluate(self, expression: str):
        return self.call("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 20.0) -> None:
        deadline = time.time() + timeout
        while not self.evaluate(expression):
            assert time.time() < deadline, f"timed out waiting for {expression}; page events: {self.errors()}"
            time.sleep(0.05)

    def open(self, url: str) -> None:
        self.call("Page.navigate", url="about:blank")  # a fresh document even when only the #hash differs
        self.wait_for("location.href === 'about:blank'")
        self.call("Page.navigate", url=url)
        self.wait_for("document.readyState === 'complete' && Number(document.body.dataset.frames || 0) > 0")

    def screenshot(self, path: Path) -> np.ndarray:
        from PIL import Image

        data = base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"])
        path.write_bytes(data)
        return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(np.int16)

    def errors(self) -> list[str]:
        """Uncaught exceptions, console.error/assert calls and error-level log entries of the page."""
        out = []
        for e in self.events:
            m, p = e.get("method"), e.get("params", {})
            if m == "Runtime.exceptionThrown":
                details = p["exceptionDetails"]
                out.append(f"{details.get('exception', {}).get('description', details.get('text'))} "
                           f"at {details.get('url')}:{details.get('lineNumber')}")
            elif m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                out.append(" ".join(str(a.get("value", a.get("description"))) for a in p.get("args", [])))
            elif m == "Log.entryAdded" and p["entry"]["level"] == "error":
                out.append(f"{p['entry'].get('source')}: {p['entry'].get('text')}")
        return out

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()


def room(n_side: int = 60):
    """A floor, two walls and a box; the prediction gets the box (class 3) wrong as class 4."""
    g = np.linspace(0, 3, n_side)
    a, b = (x.reshape(-1) for x in np.meshgrid(g, g))
    floor = np.stack([a, b, 0 * a], 1)
    wall_x = np.stack([3 + 0 * a, a, b * 0.8], 1)  # the far walls from the viewer's start position
    wall_y = np.stack([a, 3 + 0 * a, b * 0.8], 1)
    h = np.linspace(0, 0.6, 20)
    u, v = (x.reshape(-1) for x in np.meshgrid(h, h))
    box = np.concatenate([np.stack([1.2 + u, 1.2 + v, 0.6 + 0 * u], 1), np.stack([1.2 + u, 1.2 + 0 * u, v], 1),
                          np.stack([1.2 + 0 * u, 1.2 + v, u], 1)])
    coord = np.concatenate([floor, wall_x, wall_y, box]).astype(np.float32)
    normal = np.concatenate([np.tile([0, 0, 1.0], (len(a), 1)), np.tile([-1.0, 0, 0], (len(a), 1)),
                             np.tile([0, -1.0, 0], (len(a), 1)), np.tile([0, 0, 1.0], (len(u), 1)),
                             np.tile([0, -1.0, 0], (len(u), 1)), np.tile([-1.0, 0, 0], (len(u), 1))])
    gt = np.repeat([1, 0, 0, 3], [len(a), len(a), len(a), 3 * len(u)])
    inst = np.repeat([0, 1, 2, 3], [len(a), len(a), len(a), 3 * len(u)])
    pred = np.where(gt == 3, 4, gt)
    return coord, normal, gt, pred, inst


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    exe = chromium()
    pytest.importorskip("PIL", reason="Pillow (installed with matplotlib) decodes the screenshots")
    b = Browser(exe, tmp_path_factory.mktemp("chromium") / "profile")
    yield b
    b.close()


@pytest.fixture(scope="module")
def page(tmp_path_factory) -> Path:
    coord, normal, gt, pred, inst = room()
    pal = palette(20, "scannet")
    layers = {"gt": color_labels(gt, pal), "pred": color_labels(pred, pal), "errors": error_colors(gt, pred),
              "instances": instance_colors(inst)}
    legend = [("floor", pal[1]), ("wall", pal[0]), ("bed", pal[3]), ("chair", pal[4])]
    return write_viewer(tmp_path_factory.mktemp("viewer") / "room_viewer.html", coord, layers,
                        labels={"gt": "ground truth", "pred": "prediction"}, legends={"gt": legend, "pred": legend},
                        title="test room <&>", normal=normal)


def drawn_pixels(img: np.ndarray) -> np.ndarray:
    """Mask of canvas pixels that are not background (the overlays sit in the corners; we look at the
    middle of the window, where the scene is)."""
    h, w, _ = img.shape
    mid = img[h // 6: h - h // 6, w // 5: w - w // 5]
    return np.abs(mid - BACKGROUND).sum(-1) > 12


@pytest.mark.parametrize("renderer", ["auto", "2d"])
def test_viewer_draws_and_switches(browser, page, tmp_path, renderer):
    query = "?renderer=2d" if renderer == "2d" else ""
    seen = len(browser.errors())
    browser.open(page.as_uri() + query + "#mode=gt")
    assert browser.evaluate("document.body.dataset.drawn") == "gt"
    used = browser.evaluate("document.body.dataset.renderer")
    assert used == "2d" if renderer == "2d" else used in ("webgl", "2d")
    assert browser.evaluate("document.title") == "test room <&>"
    buttons = browser.evaluate("[...document.querySelectorAll('#buttons button')].map(b => b.dataset.mode)")
    assert buttons == ["gt", "pred", "errors", "instances"]
    shots = {"gt": browser.screenshot(tmp_path / f"{used}_gt.png")}
    assert drawn_pixels(shots["gt"]).mean() > 0.15, "the canvas is (nearly) blank"
    assert len(np.unique(shots["gt"].reshape(-1, 3), axis=0)) > 4

    for mode in ("pred", "errors"):
        frames = int(browser.evaluate("document.body.dataset.frames"))
        browser.evaluate(f"document.querySelector('#buttons button[data-mode={mode}]').click()")
        browser.wait_for(f"document.body.dataset.drawn === '{mode}' && +document.body.dataset.frames > {frames}")
        shots[mode] = browser.screenshot(tmp_path / f"{used}_{mode}.png")
    changed = np.abs(shots["pred"] - shots["gt"]).sum(-1) > 30
    # Only the box is predicted wrong: the switch changes some pixels, but far from all.
    assert 0.002 < changed.mean() < 0.5, changed.mean()
    e = shots["errors"]  # WRONG_COLOR, darkened with depth
    red = (e[..., 0] > 100) & (e[..., 0] > 3 * e[..., 1]) & (e[..., 0] > 3 * e[..., 2])
    assert red[changed].mean() > 0.5 and red[~changed].mean() < 0.05, "wrong points should be the red ones"
    # The URL parameter calls the same setMode as the button: the same picture.
    browser.open(page.as_uri() + query + "#mode=pred")
    assert browser.evaluate("document.body.dataset.drawn") == "pred"
    again = browser.screenshot(tmp_path / f"{used}_pred_from_url.png")
    assert (np.abs(again - shots["pred"]).sum(-1) > 30).mean() < 0.005
    assert browser.errors()[seen:] == [], browser.errors()[seen:]


def test_console_errors_are_caught(browser, tmp_path):
    """The error check above can fail: a page that throws and logs an error is reported."""
    bad = tmp_path / "bad.html"
    bad.write_text("<!doctype html><title>bad</title><body><script>console.error('boom');"
                   "document.body.dataset.frames = 1; missingFunction();</script></body>")
    before = len(browser.errors())
    browser.open(bad.as_uri())
    found = browser.errors()[before:]
    assert any("boom" in e for e in found) and any("missingFunction" in e for e in found), found


def test_viewer_orbit_and_zoom(browser, page, tmp_path):
    """Dragging orbits the camera and the wheel zooms: both redraw a different picture."""
    seen = len(browser.errors())
    browser.open(page.as_uri() + "#mode=gt")
    before = browser.screenshot(tmp_path / "orbit_before.png")
    yaw, dist = browser.evaluate("[window.voltViewer.camera.yaw, window.voltViewer.camera.dist]")

    def mouse(kind: str, x: int, **extra) -> None:
        browser.call("Input.dispatchMouseEvent", type=kind, x=x, y=250, **extra)

    frames = int(browser.evaluate("document.body.dataset.frames"))
    mouse("mousePressed", 450, button="left", buttons=1, clickCount=1)
    for x in (480, 520, 560):
        mouse("mouseMoved", x, button="left", buttons=1)
    mouse("mouseReleased", 560, button="left", buttons=0, clickCount=1)
    browser.wait_for(f"+document.body.dataset.frames > {frames} && window.voltViewer.camera.yaw !== {yaw}")
    rotated = browser.screenshot(tmp_path / "orbit_rotated.png")
    assert (np.abs(rotated - before).sum(-1) > 30).mean() > 0.05

    frames = int(browser.evaluate("document.body.dataset.frames"))
    mouse("mouseWheel", 450, deltaX=0, deltaY=-600)
    browser.wait_for(f"+document.body.dataset.frames > {frames} && window.voltViewer.camera.dist < {dist}")
    zoomed = browser.screenshot(tmp_path / "orbit_zoomed.png")
    assert drawn_pixels(zoomed).mean() > drawn_pixels(rotated).mean()
    assert browser.errors()[seen:] == [], browser.errors()[seen:]
