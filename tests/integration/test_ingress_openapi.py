"""`docs/openapi.yaml` against the real ingress (real Kafka), with schemathesis.

Every operation of the document gets a fixed, derandomized budget of generated requests (schema
conformant ones, and the coverage phase's boundary and negative ones); every answer must be no
server error (5xx) and conform to the document: a documented status, the documented content type,
the documented headers (`Server: paynotify`, `Allow: POST` on 405) and body (`fail`, `success`,
the readiness object). The ingress runs as its own process (`python -m ingress`, as deployed), on
topics of this module's own: in this process its Kafka client's use of `random` would disturb
Hypothesis's generation (a HypothesisDeprecationWarning, an error here).
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from devtools.stack.local import free_port
from shared.adapters.topic_admin import ensure_topics
from shared.settings import Settings

if TYPE_CHECKING:
    from collections.abc import Iterator

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DOCUMENT = ROOT / "docs" / "openapi.yaml"
SCHEMA = schemathesis.openapi.from_path(DOCUMENT)
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
BUDGET = settings(
    max_examples=50,
    derandomize=True,  # the same examples on every run, in CI and locally
    database=None,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
WAIT = 30.0
SEEN: Counter[tuple[str, int]] = Counter()  # (operation, status) of every answer


@schemathesis.deserializer("text/plain")
def _text(_: schemathesis.DeserializationContext, response: schemathesis.Response) -> str:
    """Plain-text bodies (`fail`, `success`, `ok`, the metrics) are checked against their
    documented schemas too: schemathesis has no deserializer of its own for text/plain."""
    return response.content.decode(response.encoding or "utf-8")


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:  # noqa: S310 - our own listener
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.fixture(scope="module")
def ingress(
    kafka_bootstrap: str, merchants_file: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """The ingress's base URL, once it is ready (Kafka clients started, topics seen)."""
    prefix = f"openapi-{uuid.uuid4().hex[:8]}."
    settings = Settings(kafka_bootstrap_servers=kafka_bootstrap, topic_prefix=prefix)
    asyncio.run(ensure_topics(settings, [settings.topics.callbacks, settings.topics.rejected]))
    port = free_port()
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "PAYNOTIFY_MERCHANTS_FILE": str(merchants_file),
        "PAYNOTIFY_TOPIC_PREFIX": prefix,
        "PAYNOTIFY_LOG_LEVEL": "WARNING",
    }
    log = tmp_path_factory.mktemp("openapi") / "ingress.log"
    with log.open("wb") as stderr:
        process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [sys.executable, "-m", "ingress", "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + WAIT
        while True:
            assert process.poll() is None, f"the ingress exited: {log.read_text()[-2000:]}"
            try:
                if _get(f"{url}/readyz")[0] == 200:
                    break
            except OSError:
                pass  # not listening yet
            assert time.monotonic() < deadline, f"the ingress is not ready: {log.read_text()}"
            time.sleep(0.1)
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(WAIT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(WAIT)
    text = log.read_text()
    assert process.returncode == 0, text[-2000:]
    assert '"level":"error"' not in text, text[-2000:]  # aiohttp logs a crash (a 500) as one


@SCHEMA.parametrize()
@BUDGET
def test_every_answer_conforms_to_the_document(case: schemathesis.Case[Any], ingress: str) -> None:
    """No 5xx, and the status, content type, headers and body the document gives."""
    response = case.call(base_url=ingress, timeout=WAIT)
    SEEN[f"{case.method} {case.path}", response.status_code] += 1
    case.validate_response(response, checks=CHECKS)


def test_the_run_reached_the_refusals_and_only_valid_examples_were_published(ingress: str) -> None:
    """The generated notifications reached the content-type, signature and field checks (415,
    401, 400); the only ones answered `success` are the document's signed example (and variants
    that keep it valid), each one published: `success` and published go together."""
    if not SEEN:
        pytest.skip("runs after the generated cases (run the whole module)")
    statuses = {status for (operation, status) in SEEN if operation == "POST /notify"}
    assert {400, 401, 415} <= statuses, SEEN
    assert all(status < 500 for _, status in SEEN)
    successes = sum(n for (operation, status), n in SEEN.items() if status == 200
                    and operation.startswith("POST /notify"))  # fmt: skip
    status, metrics = _get(f"{ingress}/metrics")
    assert status == 200
    published = re.search(r"^paynotify_ingress_published_total (\S+)$", metrics, re.MULTILINE)
    assert published, metrics
    assert float(published.group(1)) == successes
