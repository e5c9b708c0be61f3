"""bench/RESULTS.md: replace one benchmark's section, keep every other section as it is."""

from __future__ import annotations

from pathlib import Path

__all__ = ["replace_section"]


def replace_section(path: Path, heading: str, text: str) -> None:
    """Replace the section ``heading`` (``"## Records"``: up to the next ``## `` heading) with ``text``.

    Args:
        path: the results file (created with a title when missing).
        heading: the section's heading line, e.g. ``"## Tuning"``.
        text: the new section, starting with ``heading``; appended when the file has no such section.
    """
    if not text.startswith(heading + "\n"):
        raise ValueError(f"the new section must start with its heading {heading!r}, found {text[:40]!r}")
    body = path.read_text(encoding="utf-8") if path.exists() else "# Benchmark results\n\n"
    text = text.rstrip("\n") + "\n"
    start = body.find(heading + "\n")
    if start < 0:
        body = body.rstrip("\n") + "\n\n" + text
    else:
        end = body.find("\n## ", start + 1)
        body = body[:start] + text + (("\n" + body[end + 1:]) if end >= 0 else "")
    path.write_text(body, encoding="utf-8")
