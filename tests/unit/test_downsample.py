"""Downsampling keeps the envelope of a series: first, last, min and max of every bucket."""

from __future__ import annotations

import math
import random
from collections.abc import Iterator

import pytest

from traindepot.downsample import downsample


def series(n: int, seed: int = 0) -> Iterator[tuple[float, float]]:
    """A noisy decaying loss curve of `n` points, generated lazily."""
    rng = random.Random(seed)
    for step in range(1, n + 1):
        yield float(step), 3.0 * math.exp(-step / (n / 5)) + rng.gauss(0.0, 0.05)


def test_short_series_is_returned_whole() -> None:
    points = list(series(10))
    assert downsample(iter(points), count=10, max_points=10) == points
    assert downsample(iter([]), count=0, max_points=8) == []


def test_million_points_keep_first_last_global_min_and_max() -> None:
    n = 1_000_000
    points = list(series(n))
    # Spikes a chart must show, placed in the middle of buckets.
    points[123_457] = (points[123_457][0], 50.0)
    points[654_321] = (points[654_321][0], -50.0)

    kept = downsample(iter(points), count=n, max_points=1000)

    assert 4 < len(kept) <= 1000
    assert kept[0] == points[0]
    assert kept[-1] == points[-1]
    assert min(y for _, y in kept) == min(y for _, y in points) == -50.0
    assert max(y for _, y in kept) == max(y for _, y in points) == 50.0
    assert (points[123_457][0], 50.0) in kept and (points[654_321][0], -50.0) in kept
    xs = [x for x, _ in kept]
    assert xs == sorted(xs) and len(set(xs)) == len(xs)  # in order, no point twice
    assert set(kept) <= set(points)  # real points only, never averages


def test_every_bucket_keeps_its_own_extremes() -> None:
    n, max_points = 10_000, 100
    points = list(series(n, seed=3))
    kept = set(downsample(iter(points), count=n, max_points=max_points))
    buckets = max_points // 4
    for b in range(buckets):
        members = [p for i, p in enumerate(points) if i * buckets // n == b]
        assert members[0] in kept and members[-1] in kept
        assert min(members, key=lambda p: p[1]) in kept
        assert max(members, key=lambda p: p[1]) in kept


def test_streams_from_a_generator_and_tolerates_growth() -> None:
    # The count was taken before the series grew by a few points: they join the last bucket.
    kept = downsample(series(10_050), count=10_000, max_points=400)
    assert len(kept) <= 400
    assert kept[-1][0] == 10_050.0


def test_max_points_must_hold_a_bucket() -> None:
    with pytest.raises(ValueError):
        downsample(iter([(1.0, 1.0)] * 10), count=10, max_points=3)
