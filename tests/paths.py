"""Where the tests find the repository's own files, wherever in tests/ they sit."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent  # the repository's root
TESTS = ROOT / "tests"
DATA = TESTS / "data"

# Tests run hooks as processes; each would leave a hook host behind for ten minutes. The conftest turns
# it off through this variable, which every environment a test builds keeps; tests of the host set it.
HOOK_HOST_OFF = "AGENT_COORD_HOOK_HOST_IDLE_S"
