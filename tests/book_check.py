"""After `jupyter-book build`: every image a page shows exists and is shown once, and no figure was pasted as text.

A glued figure that went wrong renders as a broken image or as the text "<Figure size ...>", without a
Sphinx warning, so `-W` alone does not catch it. Run by `make book`.
"""

import hashlib
import re
import sys
from pathlib import Path

html = Path(sys.argv[1] if len(sys.argv) > 1 else "_build/html")
problems = []
pages = sorted(html.glob("book/**/*.html")) + [html / "index.html"]
for page in pages:
    text = page.read_text(encoding="utf-8")
    shown = {}
    for src in re.findall(r'<img[^>]+src="([^"]+)"', text):
        if src.startswith(("http", "data:")):
            continue
        if not (page.parent / src).resolve().exists():
            problems.append(f"{page}: image {src} is missing")
            continue
        digest = hashlib.sha256((page.parent / src).resolve().read_bytes()).hexdigest()
        if digest in shown:  # e.g. a glued figure the inline backend showed again
            problems.append(f"{page}: the figure {src} is shown twice (also as {shown[digest]})")
        shown[digest] = src
    if "&lt;Figure size" in text or "<Figure size" in text:
        problems.append(f"{page}: a figure was rendered as text")
results = html / "book" / "results.html"
if not results.exists() or results.read_text(encoding="utf-8").count("<img") < 4:
    problems.append(f"{results}: expected the results page with at least 4 figures")
print("\n".join(problems) or f"book check: {len(pages)} pages, all images present")
sys.exit(1 if problems else 0)
