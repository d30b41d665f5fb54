"""Number and table formatting shared by the report, `runs` and `summary` output."""
from __future__ import annotations


def format_count(n: float) -> str:
    """12345678 -> '12.35M'; small numbers stay whole."""
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f}{unit}"
    return f"{int(n)}"


def format_seconds(s: float | None) -> str:
    """93.4 -> '1m33s'; None -> ''."""
    if s is None:
        return ""
    s = int(round(s))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{sec:02d}s" if m else f"{sec}s"


def pct(x: float | None, digits: int = 2) -> str:
    return "" if x is None or x != x else f"{100 * x:.{digits}f}%"  # None or NaN: no figure


def text_table(header: list[str], rows: list[list[str]], right: set[int] = frozenset()) -> str:
    """Plain aligned columns for the terminal; column indices in `right` are right-aligned."""
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]

    def line(cells):
        return "  ".join(str(c).rjust(w) if i in right else str(c).ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])
