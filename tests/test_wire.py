"""The daemon's messages to its web process carry data, never code (``device/wire.py``)."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np
import pytest

from device.prediction import Prediction
from device.stations import Station
from device.status import BOARD_WIRE, LiveView, ModelInfo, PersonView, StatusBoard
from device.wire import Wire, WireError


def prediction(label: str) -> Prediction:
    return Prediction(
        1.5, label, 0.9, ((label, 0.9), ("other", 0.1)), 3, 7, 100.0, 233.3, "poses", "1.0.0", 4.2
    )


def test_a_board_and_a_live_view_arrive_as_they_were() -> None:
    board = StatusBoard("kiosk-1")
    board.set_model(
        ModelInfo(
            "poses",
            "1.0.0",
            "ab" * 32,
            "tflite",
            ("squat", "other"),
            30,
            label_names=MappingProxyType({"squat": "Squat"}),
        )
    )
    board.record_stage("pose", 0.0125)
    board.count("frames_processed", 7)
    board.add_prediction(prediction("squat"))
    copy = StatusBoard("kiosk-1")
    copy.restore(board.export())
    assert copy.snapshot() == board.snapshot()
    assert copy.model is not None and copy.model.display_name("squat") == "Squat"
    assert isinstance(copy.model.label_names, MappingProxyType)

    image = np.arange(480 * 640 * 3, dtype=np.uint8).reshape(480, 640, 3)
    points = np.full((33, 5), np.nan)
    view = LiveView(
        image,
        points,
        prediction("squat"),
        42,
        "squat 2",
        (PersonView(2, points, "squat"),),
        (Station("mat", ((0.0, 0.0), (10.0, 0.0), (10.0, 10.0))),),
        (640, 480),
    )
    sent = BOARD_WIRE.decode(BOARD_WIRE.encode(("view", view)))
    assert sent[0] == "view" and sent[1].frame_number == 42 and sent[1].stations == view.stations
    assert np.array_equal(sent[1].image, image) and not sent[1].image.flags.writeable
    assert np.array_equal(sent[1].people[0].points, points, equal_nan=True)


@dataclass(frozen=True)
class Payload:
    command: str


def test_only_the_wires_classes_are_built_and_broken_messages_are_refused() -> None:
    wider = BOARD_WIRE.extended(Payload)
    with pytest.raises(WireError, match="'Payload' is not a class of this wire"):
        BOARD_WIRE.decode(wider.encode({"x": Payload("rm -rf /")}))
    with pytest.raises(TypeError, match="Payload does not travel on this wire"):
        BOARD_WIRE.encode(Payload("x"))
    data = Wire(()).encode((np.zeros(4), b"bundle"))
    with pytest.raises(WireError, match="bytes are missing"):
        Wire(()).decode(data[:-3])
    with pytest.raises(WireError):
        StatusBoard("x").restore(Wire(()).encode({"_counters": 1, "_not_a_field": 2}))


def test_deques_keep_their_items_types_and_bound() -> None:
    timings = deque([0.5, 1e-3, float("nan"), float("inf")], maxlen=600)
    mixed = deque([1.5, 2, "x"], maxlen=3)
    whole = deque([1.0, 2], maxlen=None)  # an int among floats stays an int
    sent = Wire(()).decode(Wire(()).encode((timings, mixed, whole, deque(maxlen=5))))
    assert [type(d) for d in sent] == [deque] * 4
    assert [d.maxlen for d in sent] == [600, 3, None, 5]
    assert np.array_equal(list(sent[0]), list(timings), equal_nan=True) and type(sent[0][0]) is float
    assert list(sent[1]) == [1.5, 2, "x"] and type(sent[1][1]) is int
    assert list(sent[2]) == [1.0, 2] and type(sent[2][1]) is int
    assert list(sent[3]) == []
    data = Wire(()).encode(timings)
    with pytest.raises(WireError):
        Wire(()).decode(data[:-3])
