"""The decision layer: majority and hysteresis smoothing of probability streams."""

from __future__ import annotations

import numpy as np
import pytest

from device.classifier import Smoother


def stream(smoother: Smoother, rows: list[list[float]]) -> list[tuple[int, float]]:
    return [smoother.decide(np.array(row)) for row in rows]


def test_no_smoothing_is_the_argmax() -> None:
    assert stream(Smoother("none"), [[0.2, 0.8], [0.9, 0.1]]) == [(1, 0.8), (0, 0.9)]


def test_majority_holds_a_label_through_a_single_outlier() -> None:
    rows = [[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.9, 0.1]]
    decided = stream(Smoother("majority", k=3), rows)
    assert [label for label, _ in decided] == [0, 0, 0, 0]
    # confidence: the chosen label's mean probability over the vote, not its one current value
    assert decided[2][1] == pytest.approx((0.9 + 0.8 + 0.3) / 3)


def test_majority_ties_go_to_the_most_recent_label() -> None:
    decided = stream(Smoother("majority", k=2), [[0.9, 0.1], [0.2, 0.8]])
    assert decided[-1][0] == 1


def test_hysteresis_switches_only_above_enter_and_leaves_only_below_exit() -> None:
    smoother = Smoother("hysteresis", enter=0.7, exit=0.4)
    rows = [[0.8, 0.2], [0.45, 0.55], [0.35, 0.65], [0.3, 0.7]]
    assert [label for label, _ in stream(smoother, rows)] == [0, 0, 0, 1]
