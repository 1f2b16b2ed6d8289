"""Reading docs/benchmarks.md-style reports in tests: the generated sections between their markers."""

from __future__ import annotations


def section(text: str, name: str) -> str:
    """The body of section `name` (between `<!-- name:start -->` and `<!-- name:end -->`); fails if absent."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    assert start in text and end in text, text[-2000:]
    return text[text.index(start) + len(start) : text.index(end)]
