"""Offline text of two domains, from what ships with Python itself and with installed packages.

* ``docstrings``: the first paragraph of every function and class docstring in the standard library's
  source files (read with ``ast``, nothing imported): technical English about programming.
* ``licences``: sentences of the licence texts installed packages ship in their ``*.dist-info`` folders
  (and ``/usr/share/common-licenses`` where the system has it): legal English.

Sentences of 6-40 words, deduplicated, in a seeded order, so every run splits them the same way.
"""

from __future__ import annotations

import ast
import random
import re
import site
import sysconfig
from pathlib import Path

__all__ = ["docstrings", "licences"]


def _clean(text: str) -> str | None:
    text = re.sub(r"\s+", " ", text).strip()
    words = text.split()
    if not 6 <= len(words) <= 40 or sum(c.isalpha() for c in text) < 0.6 * len(text):
        return None
    return text


def _unique(items, seed: int) -> list[str]:
    seen, out = set(), []
    for item in items:
        if item and item.lower() not in seen:
            seen.add(item.lower())
            out.append(item)
    out.sort()
    random.Random(seed).shuffle(out)
    return out


def docstrings(seed: int = 0) -> list[str]:
    """First paragraphs of the standard library's docstrings."""
    root = Path(sysconfig.get_paths()["stdlib"])
    found = []
    for path in sorted(root.glob("**/*.py")):
        if any(part in ("site-packages", "test", "tests", "idlelib", "lib2to3") for part in path.parts):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, OSError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                doc = ast.get_docstring(node)
                if doc:
                    found.append(_clean(doc.split("\n\n")[0]))
    return _unique(found, seed)


def licences(seed: int = 0) -> list[str]:
    """Sentences of the licence texts installed with the packages (and the system's common licences)."""
    files = []
    for folder in site.getsitepackages():
        files += sorted(Path(folder).glob("*.dist-info/**/LICEN[CS]E*")) + sorted(Path(folder).glob("*.dist-info/COPYING*"))
    common = Path("/usr/share/common-licenses")
    if common.is_dir():
        files += sorted(p for p in common.iterdir() if p.is_file())
    found = []
    for path in files:
        try:
            text = path.read_text(encoding="utf-8", errors="ignore")
        except OSError:
            continue
        for sentence in re.split(r"(?<=[.;:])\s+(?=[A-Z(\"])", re.sub(r"\s+", " ", text)):
            found.append(_clean(sentence))
    return _unique(found, seed)
