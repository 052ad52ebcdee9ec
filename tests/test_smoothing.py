"""The decision layer: mean and hysteresis smoothing over spans of source time."""

from __future__ import annotations

import numpy as np
import pytest

from device.smoothing import Smoother


def stream(smoother: Smoother, rows: list[list[float]], every_ms: float = 100.0) -> list[tuple[int, float]]:
    decisions = [smoother.decide(n * every_ms, np.array(row)) for n, row in enumerate(rows)]
    return [(d.label, d.confidence) for d in decisions]


def test_no_smoothing_is_the_argmax() -> None:
    assert stream(Smoother("none"), [[0.2, 0.8], [0.9, 0.1]]) == [(1, 0.8), (0, 0.9)]


def test_mean_holds_a_label_through_a_single_outlier() -> None:
    rows = [[0.9, 0.1], [0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.9, 0.1]]
    decided = stream(Smoother("mean", span_s=0.3), rows)  # results 100 ms apart
    assert [label for label, _ in decided] == [0, 0, 0, 0, 0]
    # confidence: the chosen label's mean probability over the last 0.3 s, not its current value
    assert decided[3][1] == pytest.approx((0.9 + 0.8 + 0.3) / 3)


def test_each_result_weighs_the_time_it_stands_for_not_one_vote() -> None:
    """Two quick results of one label, then one of another after a pause: the pause is the
    second label's time, so over the last second it weighs nine times as much."""
    smoother = Smoother("mean", span_s=1.0)
    smoother.decide(0.0, np.array([1.0, 0.0]))
    smoother.decide(100.0, np.array([1.0, 0.0]))
    decision = smoother.decide(1000.0, np.array([0.0, 1.0]))
    assert decision.label == 1 and decision.confidence == pytest.approx(0.9)


def test_the_published_label_is_the_most_probable_of_the_published_probabilities() -> None:
    """A vote could publish a label whose probability is not the highest; the mean cannot."""
    smoother = Smoother("mean", span_s=1.0)
    rng = np.random.default_rng(0)
    for n, row in enumerate(rng.dirichlet(np.ones(4), size=200)):
        decision = smoother.decide(n * 50.0, row)
        assert decision.label == int(np.argmax(decision.probabilities))
        assert decision.confidence == decision.probabilities[decision.label]
        assert decision.probabilities.sum() == pytest.approx(1.0)


@pytest.mark.parametrize("results_per_second", [2, 10, 50])
def test_the_span_is_seconds_of_source_time_at_any_result_rate(results_per_second: int) -> None:
    """Two seconds of label 0 then label 1, smoothed over 1 s: the switch comes 0.5 s in."""
    every = 1000.0 / results_per_second
    rows = [[1.0, 0.0]] * (2 * results_per_second) + [[0.0, 1.0]] * (2 * results_per_second)
    decided = stream(Smoother("mean", span_s=1.0), rows, every_ms=every)
    first_switch = next(n for n, (label, _) in enumerate(decided) if label == 1)
    # the switch comes when more than half of the last second says 1: 0.5 s after the change
    assert (first_switch - 2 * results_per_second) * every == pytest.approx(500.0, abs=every)


def test_reset_forgets_the_past() -> None:
    smoother = Smoother("mean", span_s=10.0)
    stream(smoother, [[1.0, 0.0]] * 5)
    smoother.reset()
    assert smoother.decide(600.0, np.array([0.3, 0.7])).label == 1


def test_hysteresis_switches_only_above_enter_and_leaves_only_below_exit() -> None:
    smoother = Smoother("hysteresis", enter=0.7, exit=0.4)
    rows = [[0.8, 0.2], [0.45, 0.55], [0.35, 0.65], [0.3, 0.7]]
    assert [label for label, _ in stream(smoother, rows)] == [0, 0, 0, 1]


@pytest.mark.parametrize(
    ("kind", "span", "enter", "exit_"),
    [("vote", 0, 0.6, 0.4), ("mean", -1, 0.6, 0.4), ("hysteresis", 0, 0.3, 0.5)],
)
def test_bad_settings_are_refused(kind: str, span: float, enter: float, exit_: float) -> None:
    with pytest.raises(ValueError):
        Smoother(kind, span, enter, exit_)
