"""The error tables the agents and their users read, written from `agent_coord.engine.guidance`.

`python -m agent_coord.claude.error_table` rewrites the table between the markers in the
`multi-agent-conflict` skill (the one table the other skills point to) and in docs/errors.md;
tests/server/test_voice.py fails when either differs from what this module renders.
"""

from __future__ import annotations

import sys
from pathlib import Path

from agent_coord.claude.install import default_source
from agent_coord.engine.guidance import ALWAYS, GUIDANCE, Guidance

BEGIN = "<!-- generated from agent_coord/engine/guidance.py -->"
END = "<!-- end of generated table -->"

SKILL = Path("skills") / "multi-agent-conflict" / "SKILL.md"
DOCS = Path(__file__).resolve().parents[2] / "docs" / "errors.md"


def _never(g: Guidance) -> str:
    return ", ".join(f.action for f in g.forbidden)


def skill_table() -> str:
    """One line per code: what it means, what to do, what to ask the user, what never to do."""
    lines = []
    for g in GUIDANCE.values():
        line = f"- **{g.code.value}**: {g.meaning}. {g.next[0].upper()}{g.next[1:]}"
        if g.ask:
            line += f" Ask the user {g.ask}"
        if g.forbidden:
            line += f" Never: {_never(g)}."
        lines.append(line)
    always = ", ".join(f.action for f in ALWAYS)
    lines.append(f"- On every code, never: {always}.")
    return "\n".join(lines)


def docs_table() -> str:
    rows = ["| code | what happened | what the agent may do | what it asks the user | never |", "|---|---|---|---|---|"]
    for g in GUIDANCE.values():
        cells = [f"`{g.code.value}`", g.meaning, g.next, g.ask or "-", _never(g) or "-"]
        rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    rows.append(f"| every code | | | | {', '.join(f.action for f in ALWAYS)} |")
    return "\n".join(rows)


def with_table(text: str, table: str) -> str:
    """`text` with the part between the markers replaced by `table`."""
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    return f"{text[:start]}\n{table}\n{text[end:]}"


def targets() -> list[tuple[Path, str]]:
    return [(default_source() / SKILL, skill_table()), (DOCS, docs_table())]


def main() -> int:
    for path, table in targets():
        text = path.read_text(encoding="utf-8")
        new = with_table(text, table)
        if new != text:
            path.write_text(new, encoding="utf-8")
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
