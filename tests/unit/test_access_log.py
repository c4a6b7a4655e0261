"""The access log line is valid JSON equal to the record, with no surprises in encoding."""

from __future__ import annotations

import asyncio
import io
import json
from dataclasses import asdict

from router.server.access_log import AccessRecord, LineSink, encode_record


def test_access_line_is_the_record_as_json() -> None:
    record = AccessRecord(request_id="r1", method="POST", path='/v1/"odd"\\path\n', client="web", route="chat",
                          provider="aimo", attempts=2, status=200, outcome="success", stream=True,
                          latency_ms=12.5, ttfb_ms=None, prompt_tokens=15, completion_tokens=72)
    line = encode_record(record)
    decoded = json.loads(line)
    assert decoded.pop("ts") > 0
    assert decoded == asdict(record)
    assert "\n" not in line


async def test_line_sink_batches_and_flushes_soon() -> None:
    stream = io.StringIO()
    sink = LineSink(stream)
    sink.write('{"a":1}')
    sink.write('{"b":2}')
    assert stream.getvalue() == ""  # buffered, not one write per request
    await asyncio.sleep(0.15)
    assert stream.getvalue() == '{"a":1}\n{"b":2}\n'


def test_line_sink_without_a_loop_writes_at_once() -> None:
    stream = io.StringIO()
    LineSink(stream).write('{"a":1}')
    assert stream.getvalue() == '{"a":1}\n'


def test_a_string_orjson_refuses_is_still_one_valid_json_line() -> None:
    record = AccessRecord(request_id="r2", method="POST", path="/v1/\udc80", outcome="success")
    decoded = json.loads(encode_record(record))
    assert decoded["path"] == "/v1/\udc80"
    assert list(decoded)[:3] == ["ts", "request_id", "method"]
