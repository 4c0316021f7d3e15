"""Open a ``snakemake --report`` page in real headless Chromium and click through it.

No browser driver and no extra Python package: Chromium is started with
``--remote-debugging-pipe`` and spoken to over the DevTools protocol on that pipe (JSON messages
ended by NUL on file descriptors 3 and 4). In the loaded page, :data:`CLICK_THROUGH` waits for
Snakemake's report app to render and then, for every category, subcategory and result, clicks
what a person would (menu entry, subcategory, the result row's eye button) and waits for the
result to open: an image must appear in the content pane and decode
(``HTMLImageElement.decode()``, natural size > 0); any other result (CSV, Markdown) is a
download link whose data URI must hold the file.

    python tests/report_browser.py results/report.html --screenshot docs/report.png
"""

from __future__ import annotations

import argparse
import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

#: An async function of the result path to leave open (or null); returns what it saw.
CLICK_THROUGH = r"""
async (finalPath) => {
  const out = {items: [], errors: [], categories: Object.keys(categories).length};
  const sleep = ms => new Promise(r => setTimeout(r, ms));
  async function until(fn, what, ms = 20000) {
    const t0 = Date.now();
    while (Date.now() - t0 < ms) {
      const v = fn();
      if (v) return v;
      await sleep(50);
    }
    throw new Error("timed out waiting for " + what);
  }
  const link = text => [...document.querySelectorAll("nav a")]
      .find(a => a.textContent.trim() === text);
  const home = () => document.querySelector("nav ol li a");  // the breadcrumbs' home icon
  const row = path => [...document.querySelectorAll("nav table tbody tr")]
      .find(tr => tr.cells[0] && tr.cells[0].textContent.trim() === path);
  const shown = path => [...document.querySelectorAll("img")]
      .find(i => i.getAttribute("src") === results[path].data_uri);
  async function open(cat, sub, path) {
    home().click();  // back to the menu (a category's name is also a breadcrumb link)
    await until(() => !document.querySelector("nav table") && document.querySelectorAll(
        "nav ol li a").length == 1 && link(cat), "menu entry " + cat);
    link(cat).click();
    if (Object.keys(categories[cat]).length > 1)
      (await until(() => link(sub), "subcategory " + sub)).click();
    return (await until(() => row(path), "result row " + path)).querySelector("a");
  }
  try {
    await until(() => Object.keys(categories).every(c => link(c)) || link("Results"),
                "the report menu");
    for (const cat of Object.keys(categories).sort()) {
      for (const sub of Object.keys(categories[cat]).sort()) {
        for (const path of categories[cat][sub]) {
          const eye = await open(cat, sub, path);
          const r = results[path];
          const item = {path: path, mime: r.mime_type};
          if (r.mime_type.startsWith("image/")) {
            eye.click();
            const img = await until(() => shown(path), "the image of " + path);
            try {
              await img.decode();
              item.width = img.naturalWidth;
              item.height = img.naturalHeight;
              item.shown = Math.round(img.getBoundingClientRect().width);
            } catch (e) {
              item.error = "does not decode: " + e;
            }
          } else {
            const href = eye.getAttribute("href") || "";
            item.href = href.slice(0, 40);
            item.bytes = href.startsWith("data:") ? (await (await fetch(href)).text()).length : 0;
          }
          out.items.push(item);
        }
      }
    }
    if (finalPath) {
      const [cat, sub] = Object.entries(categories).flatMap(([c, s]) => Object.entries(s)
          .filter(([k, paths]) => paths.includes(finalPath)).map(([k]) => [c, k]))[0];
      (await open(cat, sub, finalPath)).click();
      await (await until(() => shown(finalPath), "the image of " + finalPath)).decode();
    }
  } catch (e) {
    out.errors.push(String(e));
  }
  return out;
}
"""


def chromium() -> str | None:
    """The Chromium executable (Debian's package installs /usr/bin/chromium)."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


class Browser:
    """Headless Chromium driven over ``--remote-debugging-pipe``: one page, in flat sessions."""

    def __init__(self, width: int = 1400, height: int = 900, timeout: float = 120):
        exe = chromium()
        if exe is None:
            raise FileNotFoundError("no chromium executable on PATH (apt-get install chromium)")
        self.timeout = timeout
        self.profile = tempfile.TemporaryDirectory()
        to_browser, self._write = os.pipe()
        self._read, from_browser = os.pipe()

        def pipes_to_3_and_4() -> None:  # in the child: Chromium reads fd 3, writes fd 4
            a = fcntl.fcntl(to_browser, fcntl.F_DUPFD, 10)
            b = fcntl.fcntl(from_browser, fcntl.F_DUPFD, 10)
            os.dup2(a, 3)
            os.dup2(b, 4)

        # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start
        self.proc = subprocess.Popen(
            [exe, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-dev-shm-usage", "--remote-debugging-pipe",
             f"--window-size={width},{height}", f"--user-data-dir={self.profile.name}",
             "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=pipes_to_3_and_4, pass_fds=(3, 4))
        os.close(to_browser)
        os.close(from_browser)
        self._buf = b""
        self._id = 0
        self.events: list[dict] = []
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target,
                                 flatten=True)["sessionId"]
        self.call("Page.enable", session=True)
        self.call("Emulation.setDeviceMetricsOverride", session=True, width=width,
                  height=height, deviceScaleFactor=1, mobile=False)

    def _message(self, deadline: float) -> dict:
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._read], [], [], left)[0]:
                raise TimeoutError(f"Chromium did not answer within {self.timeout} s")
            chunk = os.read(self._read, 1 << 20)
            if not chunk:
                raise RuntimeError(f"Chromium exited (code {self.proc.poll()})")
            self._buf += chunk
        raw, self._buf = self._buf.split(b"\0", 1)
        return json.loads(raw)

    def call(self, method: str, session: bool = False, **params):
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params}
        if session:
            msg["sessionId"] = self.session
        os.write(self._write, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            reply = self._message(deadline)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]
            self.events.append(reply)

    def wait_event(self, method: str) -> dict:
        deadline = time.monotonic() + self.timeout
        while True:
            for i, ev in enumerate(self.events):
                if ev.get("method") == method:
                    return self.events.pop(i)
            self.events.append(self._message(deadline))

    def open(self, url: str) -> None:
        self.events.clear()
        self.call("Page.navigate", session=True, url=url)
        self.wait_event("Page.loadEventFired")

    def evaluate(self, expression: str):
        res = self.call("Runtime.evaluate", session=True, expression=expression,
                        awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in res:
            raise RuntimeError(f"page script failed: {res['exceptionDetails']}")
        return res["result"].get("value")

    def screenshot(self, path: str | Path) -> Path:
        data = self.call("Page.captureScreenshot", session=True, format="png")["data"]
        Path(path).write_bytes(base64.b64decode(data))
        return Path(path)

    def close(self) -> None:
        try:
            self.call("Browser.close")
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._write)
        os.close(self._read)
        self.profile.cleanup()

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def click_through(report: str | Path, screenshot: str | Path | None = None,
                  final: str | None = None, timeout: float = 120) -> dict:
    """Load ``report`` in headless Chromium and open every result the way a person would;
    returns ``{"items": [...one dict per result...], "errors": [...]}``. With ``screenshot``,
    leaves ``final`` (a result path) open and writes a PNG of the page."""
    with Browser(timeout=timeout) as browser:
        browser.open(Path(report).resolve().as_uri())
        found = browser.evaluate(f"({CLICK_THROUGH})({json.dumps(final)})")
        if screenshot is not None:
            time.sleep(0.5)  # let the last image paint
            browser.screenshot(screenshot)
    return found


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("report")
    p.add_argument("--screenshot", help="write a PNG of the page with --final open")
    p.add_argument("--final", default="results/export/preview.png")
    a = p.parse_args()
    result = click_through(a.report, a.screenshot, a.final if a.screenshot else None)
    print(json.dumps(result, indent=1))
    sys.exit(1 if result["errors"] else 0)
