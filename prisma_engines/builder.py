"""Keep U+0085, U+2028 and U+2029 intact through Prisma Client Python's query builder.

Prisma Client Python 0.15 (archived upstream) writes string values with
`json.dumps(..., ensure_ascii=False)` in `prisma/_builder.py`, then indents the
query with `textwrap.indent`, which splits lines wherever `str.splitlines` does:
also at those three characters, which JSON leaves raw. Each one inside a string
then gets the indentation inserted after it, and the database stores the spaces.
This escapes them (as `\\u0085`, `\\u2028`, `\\u2029`), which JSON reads back as the
same characters; every other splitlines separator is a control character that
`json.dumps` already escapes.
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Any

_ESCAPES = str.maketrans({"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"})


def patch(builder: ModuleType) -> None:
    """Make `builder.dumps` (a generated client's `_builder` module) escape those separators; idempotent."""
    original: Callable[..., str] = builder.dumps
    if getattr(original, "escapes_line_separators", False):
        return

    def dumps(obj: Any, **kwargs: Any) -> str:
        text = original(obj, **kwargs)
        if "\x85" in text or "\u2028" in text or "\u2029" in text:  # rare: skip translate's per-char cost
            return text.translate(_ESCAPES)
        return text

    dumps.escapes_line_separators = True  # type: ignore[attr-defined]
    builder.dumps = dumps  # type: ignore[attr-defined]
