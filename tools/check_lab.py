"""Open the notebooks in JupyterLab, in headless Chromium, run them, and check what a learner sees.

One JupyterLab server (headless, on a free port, ``--allow-root`` when run as root, autosave off,
so nothing is ever written back) and one browser serve every notebook. For each notebook the
check opens it as a learner does, waits for its kernel, then fails on:

* **the unsaved-changes dot**: the notebook is modified once its kernel has started (issue 24:
  the committed form must be the one JupyterLab keeps; ``tools/notebooks.py`` writes it);
* **raw MyST**: directive or role syntax (a fence with ``{name}``, ``{cite}`` and the like,
  ``:label:`` / ``:class:`` lines) in the text of a rendered markdown cell;
* **visible solutions**: an exercise's solution (the code cells after a markdown cell tagged
  ``solution``, "#### Solution to exercise C.K", and any code cell right after an exercise) that
  is not hidden under its collapsed heading (``book/_ext/plain_notebooks.py`` has the form);

then runs every cell from the browser (Run > Run All Cells) and fails on:

* **kernel errors** in a chapter;
* **a learner lab that does not stop at its first check**, or whose error there does not show the
  check's verdict as its first line (``NotImplementedError: check_...``), in at most
  ``MAX_TRACEBACK_LINES`` lines: the learner's own line, none of the package's frames;
* **solutions shown by running them**: Run All leaves the solutions folded, unless it ends on
  one (JupyterLab unfolds the section of the cell it makes active, so stepping onto a solution
  with Shift+Enter opens it: the chapters say so, and end with a cell after the last solution);
* **a cell still running** after the notebook's budget (``--budget``, seconds);
* **widgets** that render an error or are still loading;
* **interactive figures** (ipywidgets' interact panels) that show nothing under their controls,
  or do not redraw within ``REDRAW_S`` seconds of a step of their first slider.

Usage::

    python tools/check_lab.py [chapters/01_attention.ipynb ...] [--budget 300] [--shots DIR]

Without notebooks: every chapter and every learner lab. ``--shots`` saves a screenshot of each
notebook at its first problem (else at its end). Needs Chromium, as tools/check_browser.py does;
``--if-available`` passes without one (unless ``REQUIRE_BROWSER=1``, as in CI). ``make test``
runs it on every notebook, with the baseline CPU kernels (see the Makefile).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from base64 import b64decode
from pathlib import Path

from check_browser import Browser, find_browser

ROOT = Path(__file__).resolve().parent.parent
BUDGET_S = 300.0
MAX_TRACEBACK_LINES = 3
REDRAW_S = 20.0  # seconds an interactive figure may take to redraw after a slider step

# ---------------------------------------------------------------------------------------------
# JavaScript run in JupyterLab's page (the app is exposed as window.jupyterapp).

WAIT_APP = """
(async () => {
  if (!window.jupyterapp) return false;
  await window.jupyterapp.started;
  await window.jupyterapp.restored;
  return true;
})()
"""

# The code cells of an exercise's solution: those after a markdown cell tagged "solution" (a
# heading, "#### Solution to exercise C.K", collapsed in the committed notebook), up to the next
# markdown cell. Each one must be hidden, and a code cell right after an exercise must be one.
SOLUTIONS = """
window._visibleSolutions = (nb) => {
  const tags = cell => cell.model.getMetadata('tags') || [];
  const found = [];
  let inSolution = false, afterExercise = false;
  nb.widgets.forEach((cell, i) => {
    if (cell.model.type === 'markdown') {
      inSolution = tags(cell).includes('solution');
      if (inSolution && !cell.headingCollapsed)
        found.push({cell: i, text: 'its heading is not collapsed'});
      afterExercise = tags(cell).includes('exercise');
    } else if ((inSolution || afterExercise) && !cell.isHidden) {
      const first = cell.model.sharedModel.getSource().split('\\n')[0].slice(0, 80);
      found.push({cell: i, text: first});
    }
  });
  return found;
};
true
"""

OPEN = """
(async (path) => {
  const app = window.jupyterapp;
  const w = await app.commands.execute('docmanager:open', {path, factory: 'Notebook'});
  await w.context.ready;
  await w.sessionContext.ready;
  const sleep = ms => new Promise(done => setTimeout(done, ms));
  for (let i = 0; i < 600 && w.sessionContext.kernelDisplayStatus !== 'idle'; i++) await sleep(100);
  await sleep(1000);  // what the kernel's info reply writes into the metadata lands by now
  window._checked = w;
  const nb = w.content;
  const out = {dirty: w.context.model.dirty, kernel: w.sessionContext.kernelDisplayStatus,
               raw: [], solutions: []};
  const RAW = [/`{3,}\\s*\\{[\\w-]+\\}/, /\\{(cite|cite:\\w+|ref|numref|doc|eq|term|download)\\}/,
               /^\\s*:(label|class|name|tags):/m, /\\{(solution|exercise)-(start|end)\\}/];
  // every cell is rendered at once (windowingMode "none" in this check's settings)
  for (const cell of nb.widgets) if (cell.model.type === 'markdown') cell.rendered = true;
  await sleep(200);
  for (let i = 0; i < nb.widgets.length; i++) {
    const cell = nb.widgets[i];
    if (cell.model.type !== 'markdown') continue;
    let text = cell.node.innerText;
    for (let t = 0; t < 40 && !text.trim(); t++) { await sleep(50); text = cell.node.innerText; }
    const hit = RAW.map(re => text.match(re)).find(m => m);
    if (hit)
      out.raw.push({cell: i, text: text.slice(Math.max(0, hit.index - 20), hit.index + 60)});
  }
  out.solutions = window._visibleSolutions(nb);
  return JSON.stringify(out);
})
"""

RUN = """
(async (budget) => {
  const app = window.jupyterapp, w = window._checked, nb = w.content;
  const sleep = ms => new Promise(done => setTimeout(done, ms));
  const t0 = Date.now();
  // the command's promise is not waited for to the end (the polling below is what decides),
  // so that one that never settles cannot leave the check without an answer
  await Promise.race([app.commands.execute('notebook:run-all-cells').catch(() => false),
                      sleep(2000)]);
  let quiet = 0;
  while ((Date.now() - t0) / 1000 < budget) {
    await sleep(250);
    const busy = w.sessionContext.kernelDisplayStatus !== 'idle' || nb.widgets.some(
      c => c.model.type === 'code' && c.model.executionState === 'running');
    quiet = busy ? 0 : quiet + 1;  // (a cell waiting its turn counts as running)
    if (quiet >= 4) break;
  }
  await sleep(800);  // widgets render
  const out = {seconds: (Date.now() - t0) / 1000, settled: quiet >= 4, running: [], errors: [],
               widgets: []};
  nb.widgets.forEach((cell, i) => {
    if (cell.model.type !== 'code') return;
    if (cell.model.executionState === 'running') out.running.push(i);
    for (const o of cell.model.outputs.toJSON())
      if (o.output_type === 'error')
        out.errors.push({cell: i, text: `${o.ename}: ${o.evalue}`.split('\\n')[0].slice(0, 200),
                         lines: (o.traceback || []).length,
                         // what the learner sees first in the cell's output
                         shown: (cell.outputArea ? cell.outputArea.node.innerText : '')
                                  .trim().split('\\n')[0].slice(0, 200)});
    const text = cell.outputArea ? cell.outputArea.node.innerText : '';
    for (const bad of ['Error displaying widget', 'Error rendering', 'Loading widget...'])
      if (text.includes(bad)) out.widgets.push({cell: i, text: bad});
  });
  const isCheck = /^\\s*checks\\.check_\\w+\\(/m;
  out.firstCheck = nb.widgets.findIndex(
    c => c.model.type === 'code' && isCheck.test(c.model.sharedModel.getSource()));
  out.solutions = window._visibleSolutions(nb);
  const first = out.running[0] ?? (out.errors[0] || out.widgets[0] || {}).cell;
  if (first !== undefined) await nb.scrollToItem(first, 'start');
  return JSON.stringify(out);
})
"""

# Each interact panel (ipywidgets' "widget-interact", as viz.interact_figure makes): it must show
# something (a figure or text) under its controls, and a step of its first slider (the arrow key a
# learner would press) must redraw its figure within ``wait`` seconds.
WIDGETS = """
(async (wait) => {
  const nb = window._checked.content;
  const sleep = ms => new Promise(done => setTimeout(done, ms));
  const found = [];
  for (let i = 0; i < nb.widgets.length; i++) {
    const cell = nb.widgets[i];
    if (cell.model.type !== 'code' || !cell.outputArea || cell.isHidden) continue;
    for (const panel of cell.outputArea.node.querySelectorAll('.widget-interact')) {
      await nb.scrollToItem(i, 'start');
      await sleep(200);
      const out = panel.querySelector('.widget-output');
      const image = () => { const img = out && out.querySelector('img'); return img && img.src; };
      const before = image();
      if (!before && !(out && out.innerText.trim())) {
        found.push({cell: i, problem: 'the panel shows nothing under its controls'});
        continue;
      }
      const handle = panel.querySelector('.noUi-handle');
      if (!before || !handle) { found.push({cell: i, seconds: null}); continue; }
      // one step up, or down from a slider's top value
      const key = handle.getAttribute('aria-valuenow') === handle.getAttribute('aria-valuemax')
        ? {key: 'ArrowLeft', code: 'ArrowLeft', keyCode: 37}
        : {key: 'ArrowRight', code: 'ArrowRight', keyCode: 39};
      const t0 = Date.now();
      handle.focus();
      handle.dispatchEvent(new KeyboardEvent('keydown', {...key, bubbles: true}));
      while (image() === before && Date.now() - t0 < wait * 1000) await sleep(100);
      const after = image();
      found.push(after && after !== before ? {cell: i, seconds: (Date.now() - t0) / 1000}
                 : {cell: i, problem: `no new figure ${wait} s after a step of its first slider`});
    }
  }
  return JSON.stringify(found);
})
"""

# Shut the kernel down and close the notebook unsaved. A shutdown whose promise never settles
# (seen once in CI: the page then dropped the promise, "Promise was collected") must not stop
# the check: it waits at most 10 s, and the tab is closed either way.
CLOSE = """
(async () => {
  const w = window._checked;
  const sleep = ms => new Promise(done => setTimeout(done, ms));
  let stopped = true;
  try {
    stopped = await Promise.race([w.sessionContext.shutdown().then(() => true),
                                  sleep(10000).then(() => false)]);
  } catch (error) {
    stopped = false;
  }
  w.context.model.dirty = false;
  w.dispose();
  window._checked = null;
  return stopped;
})()
"""


# ---------------------------------------------------------------------------------------------

def lab_browser() -> Browser:
    """tools/check_browser.py's headless Chromium, allowed to reach this machine's JupyterLab.

    (That one resolves no host name at all, 127.0.0.1 included; this one reaches 127.0.0.1
    only: every other host name still fails to resolve.) A long run must not be slowed down as
    a tab in the background would be.
    """
    return Browser(reach=("127.0.0.1",), flags=(
        "--disable-background-timer-throttling", "--disable-renderer-backgrounding",
        "--disable-backgrounding-occluded-windows"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Lab:
    """A headless JupyterLab on ROOT that never saves: autosave off, its own settings."""

    def __init__(self) -> None:
        self.home = Path(tempfile.mkdtemp(prefix="check-lab-"))
        settings = self.home / "settings" / "@jupyterlab" / "docmanager-extension"
        settings.mkdir(parents=True)
        (settings / "plugin.jupyterlab-settings").write_text('{"autosave": false}')
        news = self.home / "settings" / "@jupyterlab" / "apputils-extension"
        news.mkdir(parents=True)
        # no request for JupyterLab's news or for its newest version on PyPI
        (news / "notification.jupyterlab-settings").write_text(
            '{"fetchNews": "false", "checkForUpdates": false}')
        # every cell rendered at once, so that a markdown cell's text can be read without
        # scrolling to it (JupyterLab's default renders cells as they come into view)
        tracker = self.home / "settings" / "@jupyterlab" / "notebook-extension"
        tracker.mkdir(parents=True)
        (tracker / "tracker.jupyterlab-settings").write_text('{"windowingMode": "none"}')
        self.port, self.token = free_port(), secrets.token_hex(16)
        command = [sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={self.port}",
                   f"--ServerApp.token={self.token}", f"--ServerApp.root_dir={ROOT}",
                   "--LabApp.expose_app_in_browser=True",
                   f"--LabApp.user_settings_dir={self.home / 'settings'}",
                   f"--LabApp.workspaces_dir={self.home / 'workspaces'}",
                   # the checkpoints JupyterLab makes on opening go here, not next to the notebook
                   f"--FileCheckpoints.checkpoint_dir={self.home / 'checkpoints'}"]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            command.append("--allow-root")
        self.log = open(self.home / "lab.log", "wb")  # noqa: SIM115
        self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=self.log,
                                        stderr=self.log, cwd=ROOT)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                urllib.request.urlopen(f"{self.url('api/status')}", timeout=2)
                return
            except OSError:
                time.sleep(0.3)
        log = (self.home / "lab.log").read_text(errors="replace")[-2000:]
        self.close()
        raise RuntimeError(f"JupyterLab did not start:\n{log}")

    def url(self, path: str = "lab") -> str:
        return f"http://127.0.0.1:{self.port}/{path}?token={self.token}"

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.log.close()
        shutil.rmtree(self.home, ignore_errors=True)


def evaluate(dt, session: str, expression: str, timeout: float) -> object:
    result = dt.call("Runtime.evaluate", {"expression": expression, "awaitPromise": True,
                                          "returnByValue": True}, session, timeout=timeout)
    if "exceptionDetails" in result:
        details = result["exceptionDetails"]
        raise RuntimeError(details.get("exception", {}).get("description") or details["text"])
    return result["result"].get("value")


def check_notebook(dt, session: str, rel: str, budget: float, shots: Path | None) -> list[str]:
    learner_lab = rel.startswith("labs/") and "/solutions/" not in rel
    opened = json.loads(evaluate(dt, session, f"{OPEN}({json.dumps(rel)})", 180))
    problems = []
    if opened["dirty"]:
        problems.append("shows the unsaved-changes dot once its kernel has started")
    problems += [f"cell {r['cell']}: raw MyST in rendered markdown: {r['text']!r}"
                 for r in opened["raw"]]
    problems += [f"cell {s['cell']}: a solution is visible without a click: {s['text']!r}"
                 for s in opened["solutions"]]
    try:
        ran = json.loads(evaluate(dt, session, f"{RUN}({budget})", budget + 60))
    except TimeoutError:
        return [*problems, f"no answer from JupyterLab's page {budget + 60:.0f} s after Run All"]
    problems += [f"cell {i}: still running after {budget:.0f} s" for i in ran["running"]]
    if not ran["settled"] and not ran["running"]:
        problems.append(f"the kernel was not idle for 1 s in a row within {budget:.0f} s")
    if learner_lab:
        problems += learner_lab_stop(rel, ran)
    else:
        problems += [f"cell {e['cell']}: {e['text']}" for e in ran["errors"]]
    problems += [f"cell {w['cell']}: widget: {w['text']}" for w in ran["widgets"]]
    problems += [f"cell {s['cell']}: after Run All, a solution is visible without a click: "
                 f"{s['text']!r}" for s in ran["solutions"]]
    panels = json.loads(evaluate(dt, session, f"{WIDGETS}({REDRAW_S})", 60 + 2 * REDRAW_S * 20))
    problems += [f"cell {p['cell']}: interactive figure: {p['problem']}" for p in panels
                 if "problem" in p]
    redraws = [f"{p['seconds']:.1f} s" for p in panels if p.get("seconds") is not None]
    if redraws:
        print(f"  {rel}: {len(redraws)} interactive figure(s) redrawn after a slider step in "
              + ", ".join(redraws))
    if shots:
        shot = dt.call("Page.captureScreenshot", {"format": "png"}, session)
        (shots / (rel.replace("/", "__") + ".png")).write_bytes(b64decode(shot["data"]))
    close(dt, session, rel)
    print(f"  {rel}: ran in {ran['seconds']:.0f} s, {len(problems)} problem(s)")
    return problems


def close(dt, session: str, rel: str) -> None:
    """Close the notebook checked last; a kernel that does not stop is left to the server's end
    (Lab.close), which stops every kernel, and is not a problem of the notebook."""
    try:
        if not evaluate(dt, session, CLOSE, 60):
            print(f"  {rel}: its kernel did not confirm its shutdown within 10 s")
    except (RuntimeError, TimeoutError) as error:  # DevToolsError is a RuntimeError
        print(f"  {rel}: closing it failed ({error}); closing it without waiting")
        dt.call("Runtime.evaluate", {"expression": "window._checked && window._checked.dispose()"},
                session)


def learner_lab_stop(rel: str, ran: dict) -> list[str]:
    """A learner lab run as it is committed must stop at its first check cell, and the first
    line the learner sees there must be the check's verdict (not a traceback), in at most
    ``MAX_TRACEBACK_LINES`` lines."""
    if ran["firstCheck"] < 0:
        return ["has no check cell (a cell calling checks.check_...)"]
    if not ran["errors"]:
        return ["runs to the end: it should stop at its first check, whose exercise is not done"]
    error = ran["errors"][0]
    print(f"  {rel}: stops at cell {error['cell']}: {error['shown']!r} "
          f"({error['lines']} traceback lines)")
    problems = []
    if error["cell"] != ran["firstCheck"]:
        problems.append(f"stops at cell {error['cell']}, not at its first check (cell "
                        f"{ran['firstCheck']}): {error['text']}")
    if not error["shown"].startswith(("NotImplementedError: check_", "AssertionError: check_")):
        problems.append(f"cell {error['cell']}: the learner first sees {error['shown']!r}, not "
                        f"the check's verdict ({error['text']!r})")
    if error["lines"] > MAX_TRACEBACK_LINES:
        problems.append(f"cell {error['cell']}: {error['lines']} traceback lines (at most "
                        f"{MAX_TRACEBACK_LINES}: the verdict and the learner's own line)")
    return problems


def default_notebooks() -> list[str]:
    found = sorted((ROOT / "chapters").glob("*.ipynb")) + sorted((ROOT / "labs").glob("*.ipynb"))
    return [p.relative_to(ROOT).as_posix() for p in found]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", help="repository paths (default: all)")
    parser.add_argument("--budget", type=float, default=BUDGET_S, help="seconds per notebook")
    parser.add_argument("--shots", type=Path, help="save a screenshot of each notebook here")
    parser.add_argument("--if-available", action="store_true",
                        help="without Chromium, say so and pass (unless REQUIRE_BROWSER=1, as in "
                             "CI): `make test` on a machine without a browser")
    args = parser.parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)  # a line per notebook as it is done, in CI's log
    if args.if_available and find_browser() is None and os.environ.get("REQUIRE_BROWSER") != "1":
        print("check_lab: no Chromium on this machine, notebooks not run in JupyterLab "
              "(apt-get install chromium, or CHROMIUM=/path/to/chrome; CI requires it)")
        return 0
    paths = args.notebooks or default_notebooks()
    if args.shots:
        args.shots.mkdir(parents=True, exist_ok=True)
    failures: dict[str, list[str]] = {}
    lab = Lab()
    try:
        with lab_browser() as browser:
            dt = browser.devtools
            target = dt.call("Target.createTarget", {"url": "about:blank"})["targetId"]
            session = dt.call("Target.attachToTarget",
                              {"targetId": target, "flatten": True})["sessionId"]
            dt.call("Emulation.setDeviceMetricsOverride", {"width": 1280, "height": 900,
                    "deviceScaleFactor": 1, "mobile": False}, session)
            dt.call("Page.bringToFront", {}, session)
            dt.call("Emulation.setFocusEmulationEnabled", {"enabled": True}, session)
            dt.call("Page.navigate", {"url": lab.url()}, session)
            deadline = time.monotonic() + 180
            while not evaluate(dt, session, WAIT_APP, 180):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"JupyterLab's page did not start at {lab.url()}")
                time.sleep(0.5)
            evaluate(dt, session, SOLUTIONS, 10)
            for rel in paths:
                rel = Path(rel).resolve().relative_to(ROOT).as_posix()
                found = check_notebook(dt, session, rel, args.budget, args.shots)
                if found:
                    failures[rel] = found
    finally:
        lab.close()
    for rel, found in failures.items():
        print(f"{rel}:")
        for problem in found:
            print(f"  {problem}")
    print(f"check_lab: {len(paths)} notebook(s), {len(failures)} with problems")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
