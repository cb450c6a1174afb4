"""Check the built book: nothing loads from another server, no widget is left blank, and no lab
page shows the ``### BEGIN SOLUTION`` / ``### END SOLUTION`` marker lines of its source.

The rendered book must work offline and must not show empty widget areas (widgets
need a live kernel; chapters show a static figure first and tag widget cells
``remove-output`` and ``skip-execution``, so the book neither shows nor embeds them; nbval
still runs them). Run after ``jupyter-book build``.

Usage::

    python tools/check_html.py [_build/html]
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# <script src=...>, <link href=...>, <img src=...> load resources; plain <a href=...> links are
# fine.
EXTERNAL = re.compile(r"<(?:script|link|img|iframe)\b[^>]*\b(?:src|href)="
                      r"\"((?:https?:)?//[^\"]+)\"")
MARKER = re.compile(r"###\s*(?:BEGIN|END) SOLUTION")
WIDGETS = ("application/vnd.jupyter.widget-view+json", "application/vnd.jupyter.widget-state+json")


def problems(html_dir: Path) -> list[str]:
    pages = [p for p in sorted(html_dir.rglob("*.html")) if "_static" not in p.parts]
    if not pages:
        return [f"no HTML pages under {html_dir}: build the book first"]
    found = []
    for page in pages:
        text = page.read_text(encoding="utf-8", errors="replace")
        rel = page.relative_to(html_dir).as_posix()
        for url in sorted(set(EXTERNAL.findall(text))):
            found.append(f"{rel}: loads {url} from another server")
        if any(mime in text for mime in WIDGETS):
            found.append(f"{rel}: embeds a widget, which is blank or dead without a kernel (draw a "
                         "static figure first; tag the widget cell remove-output and "
                         "skip-execution)")
        markers = (len(MARKER.findall(re.sub(r"<[^>]+>", "", text))) if rel.startswith("labs/")
                   else 0)
        if markers:
            found.append(f"{rel}: shows {markers} solution-marker line(s) "
                         "(### BEGIN/END SOLUTION); book/_ext/lab_exercises.py hides them on "
                         "pages under labs/")
    return found


def main(argv: list[str]) -> int:
    html_dir = Path(argv[1]) if len(argv) > 1 else ROOT / "_build" / "html"
    found = problems(html_dir)
    for line in found:
        print(line)
    if found:
        print(f"check_html: {len(found)} problem(s)")
        return 1
    print(f"check_html: {html_dir} loads nothing from other servers and has no blank widgets")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
