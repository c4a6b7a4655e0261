"""router.jsonio: the fast decoder must accept and decode exactly what `json` does."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from router import jsonio
from router.engine.completion import ChatResult
from router.request import parse_chat_request

# Integers orjson decodes exactly: beyond them is the documented difference, tested on its own below
# (unbounded, hypothesis drew -2**63 - 1 once in a full run).
_EXACT_INTEGERS = st.integers(min_value=-(2**63), max_value=2**64 - 1)
_JSON = st.recursive(
    st.none() | st.booleans() | _EXACT_INTEGERS | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4),
    max_leaves=20,
)


@given(_JSON)
def test_decodes_like_the_standard_library(value: object) -> None:
    text = json.dumps(value, ensure_ascii=False)
    assert jsonio.loads(text.encode()) == json.loads(text)
    assert jsonio.loads(text) == json.loads(text)


@pytest.mark.parametrize("text", ['{"a": NaN}', '{"a": Infinity}', '"\\ud800"'])
def test_input_orjson_refuses_falls_back_to_the_standard_library(text: str) -> None:
    expected = json.loads(text)
    result = jsonio.loads(text.encode())
    assert json.dumps(result) == json.dumps(expected)  # NaN != NaN, so compare the encodings


def test_integers_beyond_64_bits_are_the_documented_difference() -> None:
    assert jsonio.loads(b'{"n": 18446744073709551615}') == {"n": 2**64 - 1}
    assert jsonio.loads(b'{"n": -9223372036854775808}') == {"n": -(2**63)}
    assert isinstance(jsonio.loads(b'{"n": -9223372036854775809}')["n"], float)
    assert jsonio.loads(f'{{"n": {10**30}}}'.encode()) == {"n": 1e30}  # hence not used where numbers matter
    # Past a float's range orjson refuses, and `json` decodes; past the 4,300 digits Python converts, as a
    # float too (inf), so the document stays valid JSON (engine/plain_runs.py relies on it).
    assert jsonio.loads(b'{"n": ' + b"1" * 400 + b"}") == {"n": int("1" * 400)}
    assert jsonio.loads(b'{"n": ' + b"1" * 4301 + b"}") == {"n": float("inf")}


@pytest.mark.parametrize("data", [b"", b"{", b'{"a": 1,}', b"\xff\xfe", b"nul"])
def test_invalid_json_raises_value_error(data: bytes) -> None:
    with pytest.raises(ValueError):
        jsonio.loads(data)


def test_a_prefill_continuation_keeps_huge_integers_exact() -> None:
    raw = b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "seed": 123456789012345678901234567890}'
    request = parse_chat_request(raw)
    continued = json.loads(request.continuation_body("m2", "so far"))
    assert continued["seed"] == 123456789012345678901234567890
    assert continued["messages"][-1] == {"role": "assistant", "content": "so far"}


def test_chat_result_data_keeps_huge_integers_exact_and_usage_reads_the_fast_parse() -> None:
    body = b'{"id": "c", "big": 123456789012345678901234567890, "usage": {"prompt_tokens": 3}}'
    result = ChatResult(body=body, status=200, content_type="application/json", provider="p", model="m",
                        attempts=1, request_id="r", route="x", _payload=jsonio.loads(body))
    assert result.data["big"] == 123456789012345678901234567890
    assert result.usage == {"prompt_tokens": 3}
