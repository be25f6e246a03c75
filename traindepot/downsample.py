"""Downsampling a metric series for charts: keep first, last, min and max of each bucket.

A chart of a million-point loss curve drawn from 1000 points must still show every spike and
every dip. Averaging would hide them; picking every n-th point would miss them. Splitting
the series into equal-count buckets and keeping, per bucket, its first, last, lowest and
highest point (in x order, each at most once) keeps the envelope of the curve: the global
first, last, minimum and maximum are always among the points kept.

Streaming and bounded: `downsample` reads its input once and holds one bucket's four points,
so a series read from a database cursor never has to be in memory as a whole.
"""

from __future__ import annotations

from collections.abc import Iterable

Point = tuple[float, float]  # (x, y): (step, value)

POINTS_PER_BUCKET = 4


def downsample(points: Iterable[Point], *, count: int, max_points: int) -> list[Point]:
    """At most `max_points` of `points` (in their order), `count` being how many there are.

    With `count <= max_points` every point is returned. Otherwise the series is split into
    `max_points // 4` buckets of (nearly) equal count and each contributes its first, last,
    minimum and maximum point. Points past `count` (the series grew while it was read) fall
    into the last bucket.
    """
    if max_points < POINTS_PER_BUCKET:
        raise ValueError(f"max_points must be at least {POINTS_PER_BUCKET}")
    if count <= max_points:
        return [(x, y) for x, y in points]
    buckets = max_points // POINTS_PER_BUCKET
    out: list[Point] = []
    current = -1
    # Per bucket: (index, point) of its first, last, min and max.
    first = last = low = high = (0, (0.0, 0.0))
    for index, point in enumerate(points):
        bucket = min(index * buckets // count, buckets - 1)
        if bucket != current:
            if current >= 0:
                _emit(out, first, last, low, high)
            current = bucket
            first = last = low = high = (index, point)
            continue
        last = (index, point)
        if point[1] < low[1][1]:
            low = last
        if point[1] > high[1][1]:
            high = last
    if current >= 0:
        _emit(out, first, last, low, high)
    return out


def _emit(
    out: list[Point],
    first: tuple[int, Point],
    last: tuple[int, Point],
    low: tuple[int, Point],
    high: tuple[int, Point],
) -> None:
    # In x (index) order, each point once: a bucket whose first point is its minimum
    # contributes it once.
    for _, point in sorted({first, last, low, high}, key=lambda item: item[0]):
        out.append(point)
