"""Tables whose every row is exactly one line: columns shrink, optional ones are dropped, values end in ``…``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from rich.text import Text

from agent_coord.dashboard.formatting import cut

GAP = 2  # spaces between columns


@dataclass(frozen=True)
class Column:
    header: str
    min_width: int
    max_width: int | None = None  # None: as wide as the content
    shrink: int = 0  # weight when the row is too wide; 0 never shrinks below its natural width
    right: bool = False
    keep_end: bool = False  # elide at the start (paths)
    drop: int = 0  # when even the minimums do not fit, the highest drop goes first; 0 is never dropped
    extra: bool = False  # shown only where every column fits at its natural width (never squeezed)


Cell = tuple[str, str]  # (text, style)


def fit_columns(columns: Sequence[Column], rows: Sequence[Sequence[Cell]], width: int) -> list[int]:
    """Width of each column (0: dropped) so that one row fits in ``width`` cells."""
    natural: list[int] = []
    for i, col in enumerate(columns):
        content = max([len(col.header), *(len(r[i][0]) for r in rows)])
        natural.append(min(content, col.max_width) if col.max_width else content)
    mins = [min(c.min_width, n) for c, n in zip(columns, natural, strict=True)]
    active = list(range(len(columns)))

    def total(ws: Sequence[int]) -> int:
        return sum(ws[i] for i in active) + GAP * max(0, len(active) - 1)

    # Extras go first, so that the essential columns are not squeezed to make room for them.
    while total(natural) > width and any(columns[i].extra for i in active):
        victim = max((i for i in active if columns[i].extra), key=lambda i: columns[i].drop)
        active.remove(victim)
    while total(mins) > width and any(columns[i].drop for i in active):
        victim = max((i for i in active if columns[i].drop), key=lambda i: columns[i].drop)
        active.remove(victim)
    widths = [natural[i] if i in active else 0 for i in range(len(columns))]
    excess = total(widths) - width
    # Shrink by weight: the column furthest above its minimum, relative to its weight, gives a cell.
    while excess > 0:
        candidates = [i for i in active if columns[i].shrink and widths[i] > mins[i]]
        if not candidates:
            candidates = [i for i in active if widths[i] > mins[i]]
        if not candidates:
            break
        i = max(candidates, key=lambda j: (widths[j] - mins[j]) * max(1, columns[j].shrink))
        widths[i] -= 1
        excess -= 1
    return widths


def table_lines(
    columns: Sequence[Column],
    rows: Sequence[Sequence[Cell]],
    width: int,
    limit: int,
    more: Callable[[int], str] | None = None,
    header_style: str = "bold",
) -> list[Text]:
    """Header plus at most ``limit`` lines of rows; when rows are cut, the last line says how many."""
    if limit <= 0:
        return []
    widths = fit_columns(columns, rows, width)
    shown = [i for i, w in enumerate(widths) if w > 0]

    def line(cells: Sequence[Cell], base: str = "") -> Text:
        text = Text(no_wrap=True, overflow="ellipsis", style=base)
        for n, i in enumerate(shown):
            if n:
                text.append(" " * GAP)
            value, style = cells[i]
            text.append(cut(value, widths[i], keep_end=columns[i].keep_end, right=columns[i].right), style=style)
        text.truncate(width)
        return text

    out = [line([(c.header, "") for c in columns], header_style)]
    body = limit - 1
    if len(rows) <= body:
        out += [line(r) for r in rows]
    elif body > 0:
        keep = body - 1 if more is not None else body
        out += [line(r) for r in rows[:keep]]
        if more is not None:
            out.append(Text(cut(more(len(rows) - keep), width), style="dim", no_wrap=True))
    return out


def section_header(title: str, width: int) -> Text:
    """Where a table has no rows yet: its title alone, as bold as a header."""
    return Text(cut(title, width), style="bold", no_wrap=True)
