"""Text for a terminal of a given width: long example lines folded, tables cut into column blocks.

Everything samplerkit prints for a person to read (``--help``, ``models list``, the printed
tables) fits :data:`WIDTH` columns; data meant for other programs (``--json``, ``--csv``) is
not cut.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

WIDTH = 100  # the widest line samplerkit prints for reading
_CONTINUATION = 4  # extra indent of a folded command line


def _is_command(text: str) -> bool:
    """True for a shell command of an example (folded with backslashes), False for prose."""
    return text.startswith(("samplerkit ", "torchrun ", "python ", "--", "-m ")) or " --" in text


def _units(text: str) -> list[str]:
    """The words of a command, a ``--flag`` kept with its value."""
    words, units = text.split(), []
    for word in words:
        if units and units[-1].startswith("-") and " " not in units[-1] and not word.startswith("-"):
            units[-1] += " " + word
        else:
            units.append(word)
    return units


def _fold_command(indent: str, text: str, width: int) -> list[str]:
    """``text`` folded between words into lines of at most ``width``, each but the last ending in
    `` \\``, a ``--flag value`` pair kept on one line."""
    cont = " " * (len(indent) + _CONTINUATION)
    lines, current = [], indent
    for unit in _units(text):
        if current.strip() and len(current) + 1 + len(unit) + 2 > width:
            lines.append(current + " \\")
            current = cont + unit
        else:
            current = f"{current} {unit}" if current.strip() else current + unit
    return [*lines, current]


def _split_comment(line: str) -> tuple[str, str]:
    """(an example line without its trailing ``# comment``, the comment); prose has no comment."""
    if "  # " in line and _is_command(line.strip()):
        code, comment = line.split("  # ", 1)
        code = code.rstrip()
        return code, comment.strip()
    return line.rstrip(), ""


def _comment_lines(comment: str, indent: str, width: int) -> list[str]:
    """A comment of an example on lines of its own."""
    return textwrap.wrap(comment, width, initial_indent=indent + "# ", subsequent_indent=indent + "# ")


def fit_line(line: str, width: int = WIDTH) -> list[str]:
    """``line`` as lines of at most ``width`` characters (a word longer than that stays whole).

    An example command is folded with a backslash and an indented continuation, its trailing
    ``# comment`` moved to a line of its own above it; prose is wrapped.
    """
    if len(line) <= width:
        return [line]
    code, comment = _split_comment(line)
    indent = code[: len(code) - len(code.lstrip())]
    out = _comment_lines(comment, indent, width)
    if code.endswith("\\"):  # a continued command: fold the rest, keep the backslash last
        folded = _fold_command(indent, code[:-1].strip(), width - 2)
        return out + [*folded[:-1], folded[-1] + " \\"]
    if _is_command(code.strip()):
        return out + _fold_command(indent, code.strip(), width)
    return out + textwrap.wrap(code.strip(), width, initial_indent=indent, subsequent_indent=indent + "  ",
                               break_long_words=False, break_on_hyphens=False)


def _commands(lines: list[str]) -> list[list[str]]:
    """Lines grouped into logical lines: a line ending in a backslash continues on the next."""
    groups: list[list[str]] = []
    for line in lines:
        if groups and _split_comment(groups[-1][-1])[0].endswith("\\"):
            groups[-1].append(line)
        else:
            groups.append([line])
    return groups


def fit_text(text: str, width: int = WIDTH) -> str:
    """Every line of ``text`` at most ``width`` long: a too-long example command (its continuation
    lines with it) gets its comments on lines above it and each of its lines folded (:func:`fit_line`)."""
    out: list[str] = []
    for group in _commands(text.split("\n")):
        if all(len(line) <= width for line in group):
            out += group
            continue
        split = [_split_comment(line) for line in group]
        indent = group[0][: len(group[0]) - len(group[0].lstrip())]
        comments = "; ".join(c for _, c in split if c)
        out += _comment_lines(comments, indent, width)
        out += [piece for code, _ in split for piece in fit_line(code, width)]
    return "\n".join(out)


def column_blocks(left: Sequence[str], header: Sequence[str], body: Sequence[Sequence[str]],
                  width: int = WIDTH) -> list[str]:
    """A right-aligned table with a label column, cut into blocks of columns that fit ``width``.

    ``left``: the row labels (the first entry labels the header row, usually ''); ``header``: the
    column names; ``body``: one list of cell texts per row. Each block repeats the label column;
    blocks are separated by an empty line. A column wider than ``width`` allows is shown alone.
    """
    lw = max(len(s) for s in left) + 2
    widths = [max(len(name), *(len(row[i]) for row in body)) + 2 for i, name in enumerate(header)]
    blocks: list[list[int]] = [[]]
    used = lw
    for i, w in enumerate(widths):
        if blocks[-1] and used + w > width:
            blocks.append([])
            used = lw
        blocks[-1].append(i)
        used += w
    out: list[str] = []
    for b, cols in enumerate(blocks):
        if b:
            out.append("")
        out.append(f"{left[0]:<{lw}s}" + "".join(f"{header[i]:>{widths[i]}s}" for i in cols))
        out += [f"{label:<{lw}s}" + "".join(f"{row[i]:>{widths[i]}s}" for i in cols)
                for label, row in zip(left[1:], body, strict=True)]
    return out


def wrap_cell(text: str, width: int) -> list[str]:
    """A table cell's text in lines of at most ``width`` (at least one line, '' for an empty cell)."""
    return textwrap.wrap(text, width, break_long_words=True, break_on_hyphens=False) or [""]


def wrapped_rows(header: Sequence[str], rows: Sequence[Sequence[str]], width: int = WIDTH) -> list[str]:
    """A left-aligned table whose last column wraps to the width left by the others (two spaces
    between columns); the other columns are as wide as their widest cell."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header) - 1)]
    prefix = sum(widths) + 2 * len(widths)
    last = max(width - prefix, 12)
    out = []
    for r in [header, *rows]:
        pieces = wrap_cell(r[-1], last)
        head = "  ".join(c.ljust(w) for c, w in zip(r[:-1], widths, strict=True)) + "  "
        out.append((head + pieces[0]).rstrip())
        out += [(" " * prefix + p).rstrip() for p in pieces[1:]]
    return out
