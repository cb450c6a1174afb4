"""Open every page of the built book in headless Chromium, offline, and check what a reader sees.

Each HTML page under ``_build/html`` is loaded twice from ``file://``, with every request to
another server failed (and reported): once on a desktop screen, 1280 px wide, and once on a
phone, 390 px wide. After MathJax has typeset the page, the check fails on:

* **error output**: a cell output that is a traceback, or anything a cell wrote to stderr
  (warnings included: a reader should not see them, nor the build machine's paths in them);
* **raw TeX**: ``$$``, ``\\(``, ``\\[``, ``\\begin{``, a ``\\command`` or ``$...$`` with TeX in it
  left in the page's text outside code, and MathJax's own error boxes;
* **broken links**: an ``<a href>`` to a file of the book that does not exist, or to an
  ``#anchor`` that the target page does not have;
* **external requests**: anything the page tries to load from another server;
* **console errors**: ``console.error``, uncaught exceptions, failed loads;
* **horizontal overflow on a phone**: the page is wider than a 390 px screen (the elements that
  stick out are named);
* **small figure text**: a figure whose smallest text renders below 9 px (CSS pixels of font
  size) on the desktop page, or on the phone. A PNG figure's text size cannot be read back from
  its pixels reliably, so it is recorded when the figure is saved: the book build makes every
  executed notebook's matplotlib figures carry their smallest font size, in image pixels, in a
  PNG text chunk (``smallest-text-px``, written by ``book/_ext/figure_text.py``). The check
  multiplies it by the scale the page shows the image at (rendered width / natural width). An
  image without that record cannot be measured, and fails with the scale it is shown at and
  the smallest font size that scale allows.

Usage::

    python tools/check_browser.py [_build/html] [--page chapters/01_attention.html ...]

Needs Chromium (``CHROMIUM=/path/to/chrome`` to choose one) and ``websocket-client``; it talks
to the browser over the DevTools protocol, so no browser download is involved.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit
from urllib.request import pathname2url, url2pathname

ROOT = Path(__file__).resolve().parent.parent
LIMIT_PX = 9.0  # smallest font size, in CSS pixels, that figure text may render at
DESKTOP = {"name": "1280 px", "width": 1280, "height": 900, "mobile": False}
PHONE = {"name": "390 px", "width": 390, "height": 844, "mobile": True}
# The PNG text chunks that book/_ext/figure_text.py writes into every matplotlib figure.
TEXT_PX_KEY = "smallest-text-px"
TEXT_WHAT_KEY = "smallest-text"
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
LOCAL_SCHEMES = ("file", "data", "blob", "about")
PAGE_TIMEOUT_S = 60.0


# ---------------------------------------------------------------------------------------------
# What the page itself reports, collected by JavaScript after MathJax has finished.

COLLECT_JS = r"""
async () => {
  const settle = async () => {
    if (document.readyState !== "complete")
      await new Promise(done => addEventListener("load", done, {once: true}));
    const mj = window.MathJax;
    if (mj && mj.startup && mj.startup.promise) await mj.startup.promise;
    await Promise.all([...document.images].map(img => img.complete ? null :
      new Promise(done => { img.addEventListener("load", done); img.addEventListener("error", done); })));
    if (document.fonts) await document.fonts.ready;
    await new Promise(done => requestAnimationFrame(() => requestAnimationFrame(done)));
    return true;
  };
  const timeout = new Promise(done => setTimeout(() => done(false), 20000));
  const settled = await Promise.race([settle(), timeout]);
  // unfold what a reader can unfold (dropdowns, hints, solutions): it is checked too
  document.querySelectorAll("details:not([open])").forEach(d => { d.open = true; });
  document.querySelectorAll(".toggle-hidden").forEach(el => el.classList.remove("toggle-hidden"));
  await new Promise(done => requestAnimationFrame(() => requestAnimationFrame(done)));

  const out = {url: location.href, settled, errors: [], tex: [], links: [], ids: [], images: [], overflow: null};
  const short = (text, n = 100) => {
    const s = text.replace(/\s+/g, " ").trim();
    return s.length > n ? s.slice(0, n - 3) + "..." : s;
  };
  const describe = el => {
    let s = el.tagName.toLowerCase();
    if (el.id) s += "#" + el.id;
    const classes = [...el.classList].slice(0, 3);
    if (classes.length) s += "." + classes.join(".");
    return s;
  };
  const sectionOf = el => { const s = el.closest("section[id]"); return s ? s.id : ""; };

  // error output: tracebacks, stderr, anything that prints a traceback
  for (const el of document.querySelectorAll(".output.traceback, .output.error, .output.stderr")) {
    const kind = el.classList.contains("stderr") ? "stderr" : "traceback";
    const lines = el.innerText.split("\n").map(l => l.trim()).filter(Boolean);
    const line = kind === "traceback" ? (lines.filter(l => /^\w*(Error|Exception)\b/.test(l)).pop()
                                          || lines[lines.length - 1] || "") : (lines[0] || "");
    out.errors.push({kind, section: sectionOf(el), text: short(line, 160)});
  }
  for (const el of document.querySelectorAll(".cell_output .output:not(.traceback):not(.stderr)")) {
    if (el.innerText.includes("Traceback (most recent call last)"))
      out.errors.push({kind: "traceback", section: sectionOf(el), text: "printed a traceback"});
  }

  // raw TeX in the text a reader sees (code, and math that MathJax has rendered, excluded)
  const SKIP = "pre, code, kbd, samp, script, style, textarea, mjx-container, svg, math, .highlight";
  const TEX = [/\$\$/, /\\[(\[]/, /\\[)\]]/, /\\(begin|end)\{/, /\\[A-Za-z]{2,}\b/,
               /\$[^$\s][^$]*[\\^_{}][^$]*\$/];
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    const text = node.nodeValue;
    if (!/[\\$]/.test(text)) continue;
    const parent = node.parentElement;
    if (!parent || parent.closest(SKIP)) continue;
    const style = getComputedStyle(parent);
    if (style.display === "none" || style.visibility === "hidden") continue;
    const hit = TEX.map(re => text.match(re)).find(m => m);
    if (hit) {
      const at = Math.max(0, hit.index - 30);
      out.tex.push({section: sectionOf(parent), text: short(text.slice(at, hit.index + 50), 90)});
    }
  }
  for (const el of document.querySelectorAll("mjx-merror"))
    out.tex.push({section: sectionOf(el), text: "MathJax error: " + short(el.textContent, 80)});

  // links to the book's own files, and the anchors this page has
  for (const a of document.querySelectorAll("a[href]")) {
    if (a.protocol !== "file:") continue;
    out.links.push({href: a.href, raw: a.getAttribute("href"), text: short(a.textContent, 40)});
  }
  for (const el of document.querySelectorAll("[id]")) out.ids.push(el.id);
  for (const el of document.querySelectorAll("a[name]")) out.ids.push(el.getAttribute("name"));

  // figures: every visible image of the page's content
  const content = document.querySelector("article") || document.querySelector("main") || document.body;
  [...content.querySelectorAll("img")].forEach((img, index) => {
    const box = img.getBoundingClientRect();
    if (box.width === 0 || box.height === 0) return;
    out.images.push({index: index + 1, src: img.currentSrc || img.src, alt: img.alt || "",
                     width: box.width, naturalWidth: img.naturalWidth, section: sectionOf(img)});
  });

  // horizontal overflow: the page is wider than the screen; name what sticks out
  const view = document.documentElement.clientWidth;
  out.view = view;
  const wide = Math.max(document.documentElement.scrollWidth, document.body.scrollWidth);
  if (wide > view + 1) {
    const culprits = [];
    // the outermost boxes that stick out; else the innermost box whose own text does
    const visit = (el, parentSticksOut) => {
      if (culprits.length >= 8) return true;
      const style = getComputedStyle(el);
      // fixed boxes and hidden ones do not widen the page; a box that scrolls or clips holds
      // what is inside it
      if (style.position === "fixed" || style.display === "none" || style.visibility === "hidden") return false;
      const box = el.getBoundingClientRect();
      const sticksOut = box.width > 0 && box.right > view + 1;
      if (sticksOut && !parentSticksOut) {
        culprits.push(describe(el) + " (" + Math.round(box.right) + " px): " + short(el.textContent, 60));
        return true;
      }
      if (style.overflowX !== "visible") return false;
      let found = false;
      for (const child of el.children) found = visit(child, sticksOut) || found;
      if (!found && !sticksOut && el.clientWidth > 0 && el.scrollWidth > el.clientWidth + 1
          && box.left + el.scrollWidth > view + 1) {
        culprits.push(describe(el) + " (its text runs to " + Math.round(box.left + el.scrollWidth)
                      + " px): " + short(el.textContent, 60));
        found = true;
      }
      return found;
    };
    for (const child of document.body.children) visit(child, false);
    out.overflow = {view, wide, culprits};
  }
  return out;
}
"""  # noqa: E501 (JavaScript for the browser, kept as it runs)


# ---------------------------------------------------------------------------------------------
# The DevTools protocol, over one WebSocket to the browser (sessions attached with flatten).

class DevToolsError(RuntimeError):
    pass


class DevTools:
    def __init__(self, url: str):
        import websocket  # websocket-client

        self._websocket = websocket
        self.ws = websocket.create_connection(url, suppress_origin=True, timeout=30)
        self.next_id = 0
        self.events: dict[str | None, list[tuple[str, dict]]] = defaultdict(list)
        self.blocked: dict[str | None, list[str]] = defaultdict(list)

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> int:
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        self.ws.send(json.dumps(message))
        return self.next_id

    def call(self, method: str, params: dict | None = None, session: str | None = None,
             timeout: float = 30.0) -> dict:
        wanted = self.send(method, params, session)
        deadline = time.monotonic() + timeout
        while True:
            message = self._receive(deadline, method)
            if message.get("id") == wanted:
                if "error" in message:
                    raise DevToolsError(f"{method}: {message['error'].get('message')}")
                return message.get("result", {})

    def wait_for(self, method: str, session: str | None, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            for name, params in self.events[session]:
                if name == method:
                    return params
            self._receive(deadline, method)

    def _receive(self, deadline: float, waiting_for: str) -> dict:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"no answer from the browser to {waiting_for}")
        self.ws.settimeout(left)
        try:
            message = json.loads(self.ws.recv())
        except self._websocket.WebSocketTimeoutException:
            raise TimeoutError(f"no answer from the browser to {waiting_for}") from None
        except (self._websocket.WebSocketException, OSError) as error:
            raise DevToolsError("lost the browser while waiting for "
                                f"{waiting_for}: {error!r}") from None
        if "method" in message:
            self._event(message.get("sessionId"), message["method"], message.get("params", {}))
        return message

    def _event(self, session: str | None, method: str, params: dict) -> None:
        if method == "Fetch.requestPaused":
            # the network is blocked: only the book's own files load
            url = params["request"]["url"]
            if urlsplit(url).scheme in LOCAL_SCHEMES:
                self.send("Fetch.continueRequest", {"requestId": params["requestId"]}, session)
            else:
                self.blocked[session].append(url)
                self.send("Fetch.failRequest",
                          {"requestId": params["requestId"], "errorReason": "BlockedByClient"},
                          session)
            return
        if method == "Page.javascriptDialogOpening":
            self.send("Page.handleJavaScriptDialog", {"accept": True}, session)
        self.events[session].append((method, params))

    def close(self) -> None:
        try:
            self.ws.close()
        except Exception:
            pass


def find_browser() -> str | None:
    if os.environ.get("CHROMIUM"):
        return os.environ["CHROMIUM"]
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    return None


class Browser:
    """Headless Chromium with a DevTools port, its profile in a temporary folder."""

    def __init__(self, executable: str | None = None, reach: tuple[str, ...] = (),
                 flags: tuple[str, ...] = ()):
        """``reach``: the host names that still resolve (none by default, 127.0.0.1 included);
        ``flags``: more command-line switches for Chromium."""
        self.executable = executable or find_browser()
        if not self.executable:
            raise RuntimeError("no Chromium found: install it (apt-get install chromium) or set "
                               "CHROMIUM=/path/to/chrome")
        if shutil.which(self.executable) is None:
            raise RuntimeError(f"{self.executable} is not a program this machine can run: set "
                               f"CHROMIUM=/path/to/chrome")
        self.profile = Path(tempfile.mkdtemp(prefix="check-browser-"))
        self.log = open(self.profile / "browser.log", "wb")  # noqa: SIM115
        self.process = subprocess.Popen(
            [self.executable, "--headless", "--no-sandbox", "--disable-gpu",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-default-apps", "--disable-extensions", "--no-first-run",
             "--no-default-browser-check", "--hide-scrollbars", "--mute-audio",
             "--disable-dev-shm-usage",  # containers often have a small /dev/shm
             "--disable-features=Translate,MediaRouter,OptimizationHints",
             # a second lock on the network, under the DevTools one: no host name resolves
             "--host-resolver-rules=MAP * ~NOTFOUND"
             + "".join(f", EXCLUDE {host}" for host in reach), *flags,
             "--remote-debugging-port=0", f"--user-data-dir={self.profile}", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log)
        try:
            self.devtools = DevTools(self._devtools_url())
        except BaseException:
            self.close()
            raise

    def _devtools_url(self, timeout: float = 30.0) -> str:
        port_file = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            if port_file.exists():
                lines = port_file.read_text().split()
                if len(lines) >= 2:
                    return f"ws://127.0.0.1:{lines[0]}{lines[1]}"
            time.sleep(0.05)
        self.log.flush()
        log = (self.profile / "browser.log").read_text(errors="replace")[-2000:]
        raise RuntimeError(f"{self.executable} did not start its DevTools server:\n{log}")

    def visit(self, url: str, screen: dict) -> dict:
        """Load ``url`` on ``screen`` with the network blocked; what the page says, and its logs."""
        dt = self.devtools
        # a context of its own for each visit: a first-time reader, with empty storage
        context = dt.call("Target.createBrowserContext")["browserContextId"]
        target = dt.call("Target.createTarget",
                         {"url": "about:blank", "browserContextId": context})["targetId"]
        session = dt.call("Target.attachToTarget",
                          {"targetId": target, "flatten": True})["sessionId"]
        try:
            dt.call("Emulation.setDeviceMetricsOverride",
                    {"width": screen["width"], "height": screen["height"], "deviceScaleFactor": 1,
                     "mobile": screen["mobile"]}, session)
            for domain in ("Page", "Runtime", "Log"):
                dt.call(f"{domain}.enable", {}, session)
            dt.call("Fetch.enable", {"patterns": [{"urlPattern": "*"}]}, session)
            dt.events.pop(session, None)  # only what the page itself does from here on
            navigated = dt.call("Page.navigate", {"url": url}, session)
            if navigated.get("errorText"):
                raise DevToolsError(f"could not open {url}: {navigated['errorText']}")
            dt.wait_for("Page.loadEventFired", session, PAGE_TIMEOUT_S)
            result = dt.call("Runtime.evaluate",
                             {"expression": f"({COLLECT_JS})()", "awaitPromise": True,
                              "returnByValue": True}, session, timeout=PAGE_TIMEOUT_S)
            if "exceptionDetails" in result:
                raise DevToolsError(f"the check's script failed on {url}: "
                                    f"{result['exceptionDetails'].get('text')}")
            report = result["result"]["value"]
            if unquote(report["url"].split("#")[0]) != unquote(url.split("#")[0]):
                raise DevToolsError(f"opened {report['url']} instead of {url}")
            report["console"] = console_errors(dt.events.pop(session, []))
            report["blocked"] = dt.blocked.pop(session, [])
            return report
        finally:
            with contextlib.suppress(DevToolsError, TimeoutError):  # the first error tells more
                dt.call("Target.closeTarget", {"targetId": target})
                dt.call("Target.disposeBrowserContext", {"browserContextId": context})
            dt.events.pop(session, None)
            dt.blocked.pop(session, None)

    def close(self) -> None:
        if getattr(self, "devtools", None):
            try:
                self.devtools.call("Browser.close", timeout=5)
            except Exception:
                pass
            self.devtools.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def console_errors(events: list[tuple[str, dict]]) -> list[str]:
    """Console errors, uncaught exceptions and failed loads, from a page's DevTools events."""
    found = []
    for method, params in events:
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            args = params.get("args", [])
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in args)
            found.append(f"console.{params['type']}: {text}")
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            text = details.get("exception", {}).get("description") or details.get("text", "")
            where = details.get("url", "")
            found.append(f"uncaught {text.splitlines()[0] if text else 'exception'}"
                         + (f" ({Path(urlsplit(where).path).name}:"
                            f"{details.get('lineNumber', 0) + 1})" if where else ""))
        elif method == "Log.entryAdded":
            entry = params.get("entry", {})
            if entry.get("level") != "error":
                continue
            if ("ERR_BLOCKED_BY_CLIENT" in entry.get("text", "")
                    and entry.get("source") == "network"):
                continue  # reported as an external request
            url = entry.get("url", "")
            found.append(entry.get("text", "") + (f" ({url})" if url else ""))
    return list(dict.fromkeys(found))


# ---------------------------------------------------------------------------------------------
# Figures: the smallest text size a PNG records

def png_chunks(path: Path) -> list[tuple[bytes, bytes]]:
    """The chunks of a PNG file, as (type, data), up to the image data (empty for anything else)."""
    try:
        data = path.read_bytes()
    except OSError:
        return []
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        return []
    chunks, at = [], 8
    while at + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[at:at + 8])
        if kind in (b"IDAT", b"IEND"):
            # text chunks may follow the image data too: look past it
            at += 12 + length
            continue
        chunks.append((kind, data[at + 8:at + 8 + length]))
        at += 12 + length
    return chunks


def png_text(path: Path) -> dict[str, str]:
    """The tEXt and iTXt chunks of a PNG file (empty for anything else)."""
    text = {}
    for kind, body in png_chunks(path):
        if kind == b"tEXt" and b"\0" in body:
            key, value = body.split(b"\0", 1)
            text[key.decode("latin-1")] = value.decode("latin-1")
        elif kind == b"iTXt" and body.count(b"\0") >= 3:
            key, rest = body.split(b"\0", 1)
            compressed, rest = rest[0], rest[2:]
            _language, _translated, value = rest.split(b"\0", 2)
            value = zlib.decompress(value) if compressed else value
            text[key.decode("latin-1")] = value.decode("utf-8", errors="replace")
    return text


def png_dpi(path: Path) -> float | None:
    """The resolution a PNG declares (pHYs), in dots per inch."""
    for kind, body in png_chunks(path):
        if kind == b"pHYs" and len(body) == 9:
            x, _y, unit = struct.unpack(">IIB", body)
            return x * 0.0254 if unit == 1 else None
    return None


@dataclass
class Figure:
    """One image of a page, as each screen shows it."""

    where: str
    name: str
    path: Path | None
    scales: dict[str, float] = field(default_factory=dict)  # screen name -> rendered / natural


def figure_of(image: dict, figures: dict[tuple[int, str], Figure], screen: dict) -> None:
    src = urlsplit(image["src"])
    key = (image["index"], image["src"])
    if key not in figures:
        where = f"figure {image['index']}" + (f" in #{image['section']}" if image["section"]
                                              else "")
        local = src.scheme == "file"
        figures[key] = Figure(where, Path(unquote(src.path)).name,
                              Path(url2pathname(src.path)) if local else None)
    if image["naturalWidth"]:
        figures[key].scales[screen["name"]] = image["width"] / image["naturalWidth"]


def figure_problems(figure: Figure, limit: float) -> list[str]:
    """Whether the figure's smallest text renders at least ``limit`` px on every screen."""
    label = f"{figure.where} ({figure.name})"
    if figure.path is None or not figure.scales:
        return [f"{label}: cannot measure its text (not a local image that loaded)"]
    record = png_text(figure.path)
    if TEXT_PX_KEY not in record:
        scale = min(figure.scales.values())
        need = f"{limit / scale:.1f} px in the image"
        dpi = png_dpi(figure.path)
        if dpi:
            need += f", {limit / scale * 72 / dpi:.1f} pt at its {dpi:.0f} dpi"
        shown = " and ".join(f"{s:.2f} of its size at {name}" for name, s in figure.scales.items())
        return [f"{label}: records no text size (the PNG text '{TEXT_PX_KEY}', which "
                f"book/_ext/figure_text.py adds when the book build saves a matplotlib figure), so "
                f"its text cannot be measured; shown at {shown}, its text must be at least {need}"]
    if record[TEXT_PX_KEY] == "none":
        return []  # a figure without text
    size = float(record[TEXT_PX_KEY])
    small = {name: size * s for name, s in figure.scales.items() if size * s + 1e-6 < limit}
    if not small:
        return []
    what = record.get(TEXT_WHAT_KEY, "")
    shown = " and ".join(f"{px:.1f} px at {name} (image shown at {figure.scales[name]:.2f} of "
                         f"its size)" for name, px in small.items())
    return [f"{label}: its smallest text{f' ({what})' if what else ''} renders {shown}, under "
            f"{limit:g} px: enlarge that text, or make the figure narrower"]


# ---------------------------------------------------------------------------------------------
# The whole book

@dataclass
class PageReport:
    page: str
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


REFRESH = re.compile(r"""<meta\s+http-equiv=["']refresh["']\s+content=["'][^"';]*;"""
                     r"""\s*url=([^"']+)["']""", re.IGNORECASE)
ID_ATTR = re.compile(r"""\s(?:id|name)=["']([^"']+)["']""")


def pages_of(html_dir: Path) -> list[Path]:
    return [p for p in sorted(html_dir.rglob("*.html"))
            if not {"_static", "_sources", "_images"} & set(p.relative_to(html_dir).parts)]


def anchors_in(path: Path, cache: dict[Path, set[str]]) -> set[str]:
    if path not in cache:
        cache[path] = set(ID_ATTR.findall(path.read_text(encoding="utf-8", errors="replace")))
    return cache[path]


def link_problems(page: Path, links: list[dict], html_dir: Path,
                  anchors: dict[Path, set[str]]) -> list[str]:
    found = {}
    root = html_dir.resolve()
    for link in links:
        parts = urlsplit(link["href"])
        target = Path(url2pathname(parts.path)).resolve()
        label = f"'{link['text']}' -> {link['raw']}" if link["text"] else link["raw"]
        if root not in target.parents and target != root:
            found[link["raw"]] = f"link {label} points outside the book"
        elif not target.exists():
            found[link["raw"]] = f"broken link {label}: no such file"
        elif target.is_dir():
            if not (target / "index.html").exists():
                found[link["raw"]] = f"broken link {label}: a folder without index.html"
        elif parts.fragment and target.suffix == ".html":
            anchor = unquote(parts.fragment)
            if anchor not in anchors_in(target, anchors):
                found[link["raw"]] = (f"broken anchor {label}: "
                                      f"{target.relative_to(root).as_posix()} has no #{anchor}")
    return list(found.values())


def check_page(browser: Browser, page: Path, html_dir: Path, anchors: dict[Path, set[str]],
               limit: float = LIMIT_PX) -> PageReport:
    rel = page.relative_to(html_dir).as_posix()
    report = PageReport(rel)
    text = page.read_text(encoding="utf-8", errors="replace")
    redirect = REFRESH.search(text)
    if redirect and len(text) < 1000:
        target = (page.parent / url2pathname(redirect.group(1).split("#")[0])).resolve()
        if not target.exists():
            report.problems.append(f"redirects to {redirect.group(1)}, which does not exist")
        report.notes.append(f"a redirect to {redirect.group(1)}: not rendered")
        return report
    url = "file://" + pathname2url(str(page.resolve()))
    seen_console, seen_blocked = set(), set()
    figures: dict[tuple[int, str], Figure] = {}
    for screen in (DESKTOP, PHONE):
        found = browser.visit(url, screen)
        if not found["settled"]:
            report.problems.append(f"at {screen['name']}: the page did not finish (MathJax or an "
                                   f"image still loading after 20 s)")
        for url_out in found["blocked"]:
            if url_out not in seen_blocked:
                seen_blocked.add(url_out)
                report.problems.append(f"requests {url_out} from another server")
        for line in found["console"]:
            if line not in seen_console:
                seen_console.add(line)
                report.problems.append(f"console error: {line}")
        for image in found["images"]:
            figure_of(image, figures, screen)
        if screen is DESKTOP:
            anchors[page.resolve()] = set(found["ids"])
            for error in found["errors"]:
                where = f" in #{error['section']}" if error["section"] else ""
                what = "a traceback" if error["kind"] == "traceback" else "stderr output"
                report.problems.append(f"error output{where}: {what}: {error['text']}")
            for tex in found["tex"]:
                where = f" in #{tex['section']}" if tex["section"] else ""
                report.problems.append(f"raw TeX{where}: {tex['text']}")
            links = found["links"]
        elif found["view"] > screen["width"] + 1:
            report.problems.append(
                f"is laid out {found['view']} px wide on a {screen['width']} px phone, and shown "
                f"zoomed out: it needs <meta name=\"viewport\" content=\"width=device-width, "
                f"initial-scale=1\">")
        elif found["overflow"]:
            over = found["overflow"]
            report.problems.append(
                f"scrolls sideways on a {over['view']} px phone (the page is {over['wide']} px "
                f"wide); sticking out: " + "; ".join(over["culprits"] or ["(nothing found)"]))
    for figure in figures.values():
        report.problems += figure_problems(figure, limit)
    report.problems += link_problems(page, links, html_dir, anchors)
    return report


def check_book(html_dir: Path, only: list[str] | None = None, limit: float = LIMIT_PX,
               executable: str | None = None) -> list[PageReport]:
    pages = pages_of(html_dir)
    if only:
        pages = [p for p in pages if p.relative_to(html_dir).as_posix() in only]
    if not pages:
        return [PageReport(str(html_dir),
                           [f"no HTML pages under {html_dir}: build the book first"])]
    anchors: dict[Path, set[str]] = {}
    reports = []
    with Browser(executable) as browser:
        for page in pages:
            reports.append(check_page(browser, page, html_dir, anchors, limit))
    return reports


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("html_dir", nargs="?", type=Path, default=ROOT / "_build" / "html")
    parser.add_argument("--page", action="append", help="check only this page (relative path)")
    parser.add_argument("--if-available", action="store_true",
                        help="without Chromium, say so and pass (unless REQUIRE_BROWSER=1, as in "
                             "CI): `make test` on a machine without a browser")
    parser.add_argument("--limit", type=float, default=LIMIT_PX,
                        help=f"smallest figure text size in CSS px (default {LIMIT_PX:g})")
    args = parser.parse_args(argv)
    if args.if_available and find_browser() is None and os.environ.get("REQUIRE_BROWSER") != "1":
        print("check_browser: no Chromium on this machine, pages not opened in a browser "
              "(apt-get install chromium, or CHROMIUM=/path/to/chrome; CI requires it)")
        return 0
    try:
        reports = check_book(args.html_dir, args.page, args.limit)
    except RuntimeError as error:
        print(f"check_browser: {error}")
        return 2
    failed = [r for r in reports if r.problems]
    for report in reports:
        status = "FAIL" if report.problems else "ok  "
        print(f"{status} {report.page}" + "".join(f"  ({note})" for note in report.notes))
        for line in report.problems:
            print(f"       {line}")
    problems = sum(len(r.problems) for r in failed)
    print(f"check_browser: {len(reports)} page(s), {len(failed)} with problems ({problems} in all)"
          if failed else f"check_browser: {len(reports)} page(s) checked, no problems")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
