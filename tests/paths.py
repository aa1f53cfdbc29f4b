"""Where the tests find the repository's own files, wherever in tests/ they sit."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent  # the repository's root
TESTS = ROOT / "tests"
DATA = TESTS / "data"
