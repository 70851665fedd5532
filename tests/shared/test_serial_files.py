"""The workers' run leaves out the files the Makefile names in SERIAL_TESTS, and the serial run
collects only those: a test marked serial in any other file would run in neither, silently."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SERIAL_MARK = re.compile(r"\bmark\.serial\b")


def _serial_tests_in_makefile() -> set[str]:
    text = (ROOT / "Makefile").read_text(encoding="utf-8")
    match = re.search(r"^SERIAL_TESTS\s*:=\s*(.*)$", text, re.MULTILINE)
    assert match, "Makefile has no SERIAL_TESTS line"
    return set(match.group(1).split())


def test_every_file_with_a_serial_test_is_named_in_the_makefile() -> None:
    named = _serial_tests_in_makefile()
    marked = {
        path.relative_to(ROOT).as_posix()
        for path in (ROOT / "tests").rglob("test_*.py")
        if SERIAL_MARK.search(path.read_text(encoding="utf-8"))
    }
    assert marked, "no test is marked serial: SERIAL_TESTS and the serial run can go"
    assert marked <= named, f"marked serial, not in SERIAL_TESTS: {marked - named}"
    missing = {name for name in named if not (ROOT / name).is_file()}
    assert not missing, f"SERIAL_TESTS names files that do not exist: {missing}"
