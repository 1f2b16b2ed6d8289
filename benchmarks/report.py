"""The shared writer of docs/benchmarks.md's generated sections and the run-description helpers of the reports."""

from __future__ import annotations

import os
import platform
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_REPORT = REPO_ROOT / "docs" / "benchmarks.md"
REPORT_HEADER = (
    "# Benchmarks\n\n"
    "Sections between `<!-- name:start -->` and `<!-- name:end -->` markers are generated; "
    "each is rewritten by the script named in it.\n\n"
)


def section_markers(name: str) -> tuple[str, str]:
    """The start and end marker lines of the section `name`."""
    return f"<!-- {name}:start -->", f"<!-- {name}:end -->"


def marked_section(name: str, body: str) -> str:
    """The start marker line, `body` (the lines between the markers, without a final newline), the end marker."""
    start_marker, end_marker = section_markers(name)
    return f"{start_marker}\n{body}\n{end_marker}"


def replace_section(text: str, name: str, body: str, heading: str = "") -> str:
    """`text` with section `name` set to `body`: the marked span replaced (markers inclusive), else appended.

    `heading`, if given, goes before an appended section, outside the markers, so rewrites leave it alone.
    """
    start_marker, end_marker = section_markers(name)
    start = text.find(start_marker)
    end = text.find(end_marker, start) if start != -1 else -1
    if end != -1:
        return text[:start] + marked_section(name, body) + text[end + len(end_marker) :]
    return text.rstrip("\n") + "\n\n" + _appended(name, body, heading)


def write_section(path: Path, name: str, body: str, heading: str = "") -> None:
    """Set section `name` of the markdown file at `path` (see replace_section); a new file gets REPORT_HEADER."""
    if path.is_file():
        text = replace_section(path.read_text(), name, body, heading)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        text = REPORT_HEADER + _appended(name, body, heading)
    path.write_text(text)


def _appended(name: str, body: str, heading: str) -> str:
    return (f"{heading}\n\n" if heading else "") + marked_section(name, body) + "\n"


def cpu_description() -> str:
    """CPU model, logical CPU count, architecture and AVX-512 support, from /proc/cpuinfo where there is one."""
    model, count, avx512 = "unknown", 0, False
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and model == "unknown":
                    model = value.strip()
                elif key == "processor":
                    count += 1
                elif key == "flags" and "avx512f" in value.split():
                    avx512 = True
    except OSError:
        model = platform.processor() or platform.machine()
    extras = [f"{count or os.cpu_count()} logical CPUs", platform.machine()]
    if avx512:
        extras.append("AVX-512")
    return f"{model} ({', '.join(extras)})"


def command_line(argv: Sequence[str] | None = None) -> str:
    """The command as typed: the interpreter relative to the working directory (if inside it) and the arguments."""
    exe = sys.executable
    try:
        rel = os.path.relpath(exe)
        if not rel.startswith(".."):
            exe = rel
    except ValueError:
        pass
    return shlex.join([exe, *(sys.argv if argv is None else argv)])
