"""Reading the end of a job's training log without reading the log.

`tail` reads backwards from the end in fixed-size blocks until it has the lines it needs,
and never more than `max_bytes` of them: memory is bounded by `max_bytes + block_size`
whatever the size of the file (a training log of many gigabytes included). `follow` reads
what is appended after a given offset, in blocks.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO

BLOCK_SIZE = 64 * 1024
MAX_TAIL_BYTES = 8 * 1024 * 1024


def tail(
    path: Path,
    lines: int,
    *,
    block_size: int = BLOCK_SIZE,
    max_bytes: int = MAX_TAIL_BYTES,
) -> tuple[bytes, int]:
    """The last `lines` lines of the file and the file's size when they were read (the
    offset to follow from). A last line without its newline counts as a line. When those
    lines are longer than `max_bytes` in all, only their last `max_bytes` are returned (the
    first line is then cut). A missing file is empty."""
    try:
        f = path.open("rb")
    except FileNotFoundError:
        return b"", 0
    with f:
        size = os.fstat(f.fileno()).st_size
        return tail_of(f, size, lines, block_size=block_size, max_bytes=max_bytes)


def tail_of(
    f: BinaryIO,
    size: int,
    lines: int,
    *,
    block_size: int = BLOCK_SIZE,
    max_bytes: int = MAX_TAIL_BYTES,
) -> tuple[bytes, int]:
    """`tail` of an open, seekable file of `size` bytes (a local file, or an object of the
    artifact store read in ranges)."""
    if lines <= 0 or size == 0:
        return b"", size
    end = size
    blocks: list[bytes] = []
    held = 0
    newlines = 0
    # A trailing newline ends the last line; it does not start another one.
    f.seek(size - 1)
    wanted = lines + 1 if f.read(1) == b"\n" else lines
    while end > 0 and held < max_bytes:
        start = max(0, end - block_size)
        f.seek(start)
        block = f.read(end - start)
        end = start
        blocks.append(block)
        held += len(block)
        newlines += block.count(b"\n")
        if newlines >= wanted:
            break
    data = b"".join(reversed(blocks))
    if newlines >= wanted:
        # Drop everything up to the newline that precedes the first wanted line.
        cut = len(data)
        for _ in range(wanted):
            cut = data.rindex(b"\n", 0, cut)
        data = data[cut + 1 :]
    if len(data) > max_bytes:
        data = data[-max_bytes:]
    return data, size


def read_from(path: Path, offset: int, *, max_bytes: int = BLOCK_SIZE) -> tuple[bytes, int]:
    """Up to `max_bytes` appended after `offset`, and the offset after them. A file that
    shrank (rotated, rewritten) is read again from its start."""
    try:
        f = path.open("rb")
    except FileNotFoundError:
        return b"", 0
    with f:
        size = os.fstat(f.fileno()).st_size
        if size < offset:
            offset = 0
        if size == offset:
            return b"", offset
        f.seek(offset)
        data = f.read(min(max_bytes, size - offset))
    return data, offset + len(data)
