"""The device's HTTP API against its own OpenAPI description (``device/openapi.json``), with schemathesis.

A real daemon (real MediaPipe on a looping real video, model 1.0.0, a bearer token) is tested
twice from the description it serves at ``/api/openapi.json``: over a real socket on 127.0.0.1,
and in-process through its WSGI app. Schemathesis generates requests for every operation
(bodies, query values, path parameters, with and without the token) and checks that no answer is
a server error and that every answer's status, content type and body conform to the description.
Examples are bounded so both runs together take about a minute.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from conftest import PoseBundle
from hypothesis import HealthCheck, assume, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from test_hostile_http import AUTH, get, hostile_kiosk

from device.daemon import Daemon
from device.web import OPENAPI

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
EXAMPLES = settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
    ],
)


@pytest.fixture(scope="module")
def kiosk(
    tmp_path_factory: pytest.TempPathFactory, pose_model: PoseBundle, data_dir: Path
) -> Iterator[Daemon]:
    yield from hostile_kiosk(tmp_path_factory.mktemp("schema-kiosk"), pose_model, data_dir)


# The live stream never ends (until the viewer leaves), so no generated call to it could finish;
# tests/test_web.py reads its parts.
ENDLESS = "/stream.mjpg"


@pytest.fixture(scope="module")
def over_http(kiosk: Daemon) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(f"http://127.0.0.1:{kiosk.http_port}/api/openapi.json")


@pytest.fixture(scope="module")
def in_process(kiosk: Daemon) -> schemathesis.BaseSchema:
    assert kiosk.web is not None
    return schemathesis.openapi.from_wsgi("/api/openapi.json", kiosk.web.app)


def test_the_served_description_is_the_shipped_file(kiosk: Daemon) -> None:
    answer = get(kiosk.http_port, "/api/openapi.json")
    assert answer.status == 200 and answer.body == OPENAPI.read_bytes()


real_socket = schemathesis.pytest.from_fixture("over_http").exclude(path=ENDLESS)
wsgi = schemathesis.pytest.from_fixture("in_process").exclude(path=ENDLESS)


@real_socket.parametrize()
@EXAMPLES
def test_the_api_over_a_real_socket_conforms_to_its_description(case: schemathesis.Case) -> None:
    """Redirects (303 from /login and /logout) are checked as answered, not followed."""
    case.call_and_validate(headers=AUTH, checks=CHECKS, timeout=30, allow_redirects=False)


def encodable_in_process(case: schemathesis.Case) -> None:
    """Werkzeug's test client (schemathesis' WSGI transport) cannot encode a multipart body that is
    not an object, such as ``[None, None]``; the real-socket run sends those cases for real."""
    assume(case.media_type != "multipart/form-data" or isinstance(case.body, dict))


@wsgi.parametrize()
@EXAMPLES
def test_the_api_in_process_conforms_to_its_description(case: schemathesis.Case) -> None:
    encodable_in_process(case)
    case.call_and_validate(headers=AUTH, checks=CHECKS)


@wsgi.parametrize()
@EXAMPLES
def test_without_the_token_every_answer_still_conforms(case: schemathesis.Case) -> None:
    encodable_in_process(case)
    case.call_and_validate(checks=CHECKS)
