"""JSON Lines on disk: a strict reader that names ``file:line`` and field, and atomic writes.

Every record format of :mod:`instructgpt.data` is read through :func:`read_jsonl`
and written through :func:`atomic_open`. Reading is strict: invalid UTF-8, invalid
JSON, duplicate keys, NaN/Infinity, a lone UTF-16 surrogate escape and a line that
is not a JSON object each raise :class:`DataError` shaped
``"{path}:{lineno}: {field}: {what is wrong}"``, and so does a line over
:data:`MAX_LINE_BYTES`, found while reading it in bounded chunks (a 1 GB line
would otherwise be held, decoded and parsed whole: some 3 GB before any check).
Writing replaces a file all at once, so a crash leaves the previous file.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, NoReturn, TextIO


class DataError(ValueError):
    """A malformed record: the message reads ``file:line: field: what is wrong``."""


def fail(source: str, name: str, what: str) -> NoReturn:
    """Raise ``DataError("{source}: {name}: {what}")``."""
    raise DataError(f"{source}: {name}: {what}")


def json_type(value: Any) -> str:
    """The JSON name of a value's type, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def as_object(obj: Any, source: str) -> dict[str, Any]:
    """``obj`` if it is a JSON object, else a DataError naming ``source``."""
    if not isinstance(obj, dict):
        fail(source, "record", f"expected a JSON object, got {json_type(obj)}")
    return obj


# --------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------

# The longest line read_jsonl reads (64 MiB, its newline not counted): far over any record's text (a whole book
# is some 1 MB), and small enough that a line's bytes, its text and its parsed record fit in memory together.
MAX_LINE_BYTES = 64 * 2**20
_CHUNK_BYTES = 2**20  # what is read at a time of a line known to be over the limit, to count its length


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _decode_line(raw: bytes, source: str) -> Any:
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        fail(source, "json", f"not valid UTF-8 (byte {e.start + 1})")
    try:
        obj = json.loads(line, object_pairs_hook=_no_duplicate_keys, parse_constant=_no_constants)
    except json.JSONDecodeError as e:
        fail(source, "json", f"invalid JSON: {e.msg} (column {e.colno})")
    except ValueError as e:  # from the hooks above
        fail(source, "json", f"invalid JSON: {e}")
    if _SURROGATE_ESCAPE.search(line):  # only a \uXXXX escape can make one: valid UTF-8 bytes cannot
        field = _lone_surrogate(obj)
        if field is not None:
            fail(source, field or "json", "a lone UTF-16 surrogate escape (\\ud800-\\udfff without its pair): "
                                           "not text any tokenizer or file can hold")
    return obj


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _lone_surrogate(value: Any, where: str = "") -> str | None:
    """The field (``responses[2]``, ``messages[0].content``; ``""`` for the top level) holding a string with a
    lone surrogate, or None. Escaped pairs (``\\ud83d\\ude00``) decode to one character and pass."""
    if isinstance(value, str):
        return where if _LONE_SURROGATE.search(value) else None
    if isinstance(value, list):
        children = [(f"{where}[{i}]", item) for i, item in enumerate(value)]
    elif isinstance(value, dict):
        if any(_LONE_SURROGATE.search(key) for key in value):
            return f"{where} key".strip()
        children = [(f"{where}.{key}" if where else key, item) for key, item in value.items()]
    else:
        return None
    for inner, item in children:
        found = _lone_surrogate(item, inner)
        if found is not None:
            return found
    return None


def read_jsonl(path: str | Path, max_line_bytes: int = MAX_LINE_BYTES) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield ``(source, object)`` for every non-blank line of a JSONL file.

    ``source`` is ``"{path}:{lineno}"`` (1-based). Invalid JSON, duplicate
    keys, NaN/Infinity, lines that are not JSON objects and lines longer than
    ``max_line_bytes`` (its newline not counted) raise DataError.
    """
    path = str(path)
    if not os.path.exists(path):
        raise DataError(f"{path}: file not found")
    if not os.path.isfile(path):
        raise DataError(f"{path}: not a file")
    with open(path, "rb") as f:
        first = True
        for lineno, raw in enumerate(_lines(f, path, max_line_bytes), start=1):
            if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]  # UTF-8 byte-order mark
            if not raw.strip():
                continue
            source = f"{path}:{lineno}"
            if first and raw.lstrip().startswith(b"[") and _is_json_array(path, max_line_bytes):
                fail(source, "json", "the file is one JSON array (a .json data set, as Alpaca's alpaca_data.json "
                                     "and LLaMA-Factory's files are), not JSON Lines: write one object per line, "
                                     "e.g. jq -c '.[]' FILE > FILE.jsonl")
            first = False
            obj = _decode_line(raw, source)
            yield source, as_object(obj, source)


def _lines(f: BinaryIO, path: str, max_line_bytes: int) -> Iterator[bytes]:
    """The lines of ``f``, each read whole only when it is at most ``max_line_bytes`` long."""
    lineno = 0
    while raw := f.readline(max_line_bytes + 1):
        lineno += 1
        if len(raw) > max_line_bytes and not raw.endswith(b"\n"):
            _too_long(f, f"{path}:{lineno}", len(raw), max_line_bytes)
        yield raw


def _too_long(f: BinaryIO, source: str, size: int, max_line_bytes: int) -> NoReturn:
    """Stop on a line over the limit, after counting the rest of it a chunk at a time."""
    while not (chunk := f.readline(_CHUNK_BYTES)).endswith(b"\n") and chunk:
        size += len(chunk)
    size += max(len(chunk) - 1, 0)
    fail(source, "json", f"the line is {size:,} bytes, over the limit of {max_line_bytes:,} bytes a line "
                         f"(jsonl.MAX_LINE_BYTES): is the file JSON Lines, one record per line? A text this "
                         f"long is to be split into records")


def _is_json_array(path: str, max_bytes: int) -> bool:
    """Whether the whole file is one JSON array (asked only of a file whose first line opens one;
    a file over ``max_bytes`` is not read whole to ask)."""
    if os.path.getsize(path) > max_bytes:
        return False
    try:
        with open(path, encoding="utf-8-sig") as f:
            return isinstance(json.load(f), list)
    except (ValueError, UnicodeDecodeError):
        return False


# --------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------

@contextmanager
def atomic_open(path: str | Path) -> Iterator[TextIO]:
    """Open ``path`` for writing text so that it is replaced all at once.

    Writes go to a temporary file in the same folder, which is flushed,
    fsynced and then moved over ``path`` with ``os.replace``. If the block
    raises, the temporary file is removed and ``path`` is left untouched.
    Parent folders are created.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # mode follows the umask
    try:
        with open(fd, "w", encoding="utf-8", newline="\n") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def fsync_dir(folder: Path) -> None:
    """Make the rename durable (best effort: not every platform allows it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
