"""`tail` reads the end of a log backwards in blocks: a log far larger than memory would
like costs a few blocks."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

from traindepot.logtail import read_from, tail


def test_tail_small_files(tmp_path: Path) -> None:
    log = tmp_path / "train.log"
    assert tail(log, 5) == (b"", 0)  # not written yet
    log.write_bytes(b"a\nb\nc\n")
    assert tail(log, 2) == (b"b\nc\n", 6)
    assert tail(log, 3)[0] == b"a\nb\nc\n"
    assert tail(log, 10)[0] == b"a\nb\nc\n"
    assert tail(log, 0)[0] == b""
    log.write_bytes(b"a\nb\nc")  # a last line still being written counts as a line
    assert tail(log, 2)[0] == b"b\nc"
    # Lines spanning many blocks.
    lines = [f"line {i} ".encode() * 7 + b"\n" for i in range(1000)]
    log.write_bytes(b"".join(lines))
    assert tail(log, 300, block_size=512)[0] == b"".join(lines[-300:])


def test_tail_of_a_huge_log_reads_only_blocks(tmp_path: Path) -> None:
    log = tmp_path / "train.log"
    huge = 400 * 1024 * 1024
    with log.open("wb") as f:
        f.write(b"--- attempt 1 started ---\n")
        f.truncate(huge)  # sparse: 400 MB on paper, nothing on disk
        f.seek(huge)
        f.write(b"\n")
        f.writelines(f'{{"step": {i}, "loss": {1 / i:.6f}}}\n'.encode() for i in range(1, 20_001))
    size = log.stat().st_size
    assert size > huge

    tracemalloc.start()
    try:
        data, offset = tail(log, 1000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    got = data.decode().splitlines()
    assert len(got) == 1000
    assert got[0] == '{"step": 19001, "loss": 0.000053}'
    assert got[-1] == '{"step": 20000, "loss": 0.000050}'
    assert offset == size
    assert peak < 2 * 1024 * 1024  # a few 64 KiB blocks, not the file


def test_tail_is_capped_when_lines_are_endless(tmp_path: Path) -> None:
    # No newline in 300 MB of (sparse) zeros: the cap, not the file, bounds the read.
    log = tmp_path / "binary.log"
    with log.open("wb") as f:
        f.truncate(300 * 1024 * 1024)
    tracemalloc.start()
    try:
        data, _ = tail(log, 10, max_bytes=1024 * 1024)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(data) == 1024 * 1024
    assert peak < 4 * 1024 * 1024


def test_read_from_follows_appends(tmp_path: Path) -> None:
    log = tmp_path / "train.log"
    log.write_bytes(b"one\n")
    data, offset = read_from(log, 0)
    assert (data, offset) == (b"one\n", 4)
    assert read_from(log, offset) == (b"", 4)
    with log.open("ab") as f:
        f.write(b"two\nthree\n")
    assert read_from(log, offset, max_bytes=4) == (b"two\n", 8)
    assert read_from(log, 8) == (b"three\n", 14)
    log.write_bytes(b"new\n")  # rewritten: start again
    assert read_from(log, 14) == (b"new\n", 4)
