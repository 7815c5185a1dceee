"""Every text file a user gives (prompt files, JSON-lines of prompts, responses or preference pairs) is read here.

The rule: UTF-8. A UTF-8 byte-order mark (what Windows editors write at the start of a "UTF-8" file) is removed,
so it never becomes part of the first prompt. Text in another encoding is refused with the file and the line: a
UTF-16 or UTF-32 byte-order mark, NUL bytes (UTF-16 without a mark, or a binary file), or bytes that are not UTF-8
(Latin-1, cp1252, ...). Guessing an encoding would silently change the text a reward model sees.
"""

from __future__ import annotations

import codecs
from pathlib import Path

# UTF-32 first: its little-endian mark begins with UTF-16's
FOREIGN_MARKS = ((codecs.BOM_UTF32_LE, "UTF-32"), (codecs.BOM_UTF32_BE, "UTF-32"),
                 (codecs.BOM_UTF16_LE, "UTF-16"), (codecs.BOM_UTF16_BE, "UTF-16"))


class NotUTF8(ValueError):
    """A text file that is not UTF-8; the message names the file (and the line where it can)."""


def read_text(path: str | Path) -> str:
    """The file's text, decoded as UTF-8 without a leading byte-order mark. OSError passes through."""
    data = Path(path).expanduser().read_bytes()
    for mark, name in FOREIGN_MARKS:
        if data.startswith(mark):
            raise NotUTF8(f"{path} is {name} text (it starts with a {name} byte-order mark): save it as UTF-8")
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8):]
    if b"\x00" in data:
        line = data[: data.index(b"\x00")].count(b"\n") + 1
        raise NotUTF8(f"{path}, line {line}: holds NUL bytes, so it is not UTF-8 text (UTF-16 without a byte-order "
                      "mark, or a binary file): save it as UTF-8")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise NotUTF8(f"{path}, line {line}: not UTF-8 text ({err.reason}): save it as UTF-8") from None
