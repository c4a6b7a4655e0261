"""Chat requests: validation naming the bad parameter, and byte-faithful upstream bodies."""

from __future__ import annotations

import functools
import json
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router import request as request_module
from router.errors import InvalidRequest
from router.request import DEFAULT_COMPLETION_ESTIMATE, clean_request_id, parse_chat_request

MESSAGES = [{"role": "user", "content": "hi"}]
AIMO_MODEL = "8W7X1tGnWh9CXwnPD7wgke31Gdcqmex4LapJvQ2afBUq:deepseek-chat-v3"


def body(**fields: Any) -> bytes:
    return json.dumps({"model": "chat", "messages": MESSAGES, **fields}).encode()


def invalid(raw: bytes | dict[str, Any]) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        parse_chat_request(raw)
    assert info.value.status == 400
    return info.value


# --- byte-faithful forwarding ------------------------------------------------------------------

def test_only_the_model_value_is_replaced_byte_for_byte() -> None:
    raw = (b'{ "temperature" :0.70,\n  "model"  :  "chat" ,'
           b'"messages":[{"role":"user","content":"caf\\u00e9 \\ud83d\\ude00"}],'
           b'\n"x_vendor": {"model": "inner", "n": 1.000}, "tools": [{"type": "function", "function": '
           b'{"name": "f", "parameters": {"model": {"type": "string"}}}}], "top_p": 1e-3 }')
    request = parse_chat_request(raw)
    out = request.body_for("provider-pubkey:model/name")
    assert out == raw.replace(b'"chat"', b'"provider-pubkey:model/name"', 1)


def test_model_ids_with_colons_and_slashes_are_opaque() -> None:
    request = parse_chat_request(body())
    out = request.body_for(AIMO_MODEL)
    assert json.loads(out)["model"] == AIMO_MODEL
    assert out == body().replace(b'"chat"', json.dumps(AIMO_MODEL).encode(), 1)
    assert parse_chat_request(body(model="org/team:model:v2")).model == "org/team:model:v2"


def test_same_model_returns_the_original_bytes() -> None:
    raw = b'{"model":"m",   "messages":[{"role":"user"}]}'
    request = parse_chat_request(raw)
    assert request.body_for("m") is request.body
    assert request.body == raw


def test_model_first_last_and_in_the_middle() -> None:
    for raw in (b'{"model":"chat","messages":[{"role":"user"}],"z":1}',
                b'{"a":[1,{"b":"]}"}],"messages":[{"role":"user"}],"model":"chat"}',
                b'{"s":"}\\"{,\\"model\\":\\"x\\"","model":"chat","messages":[{"role":"user"}]}'):
        out = parse_chat_request(raw).body_for("new")
        assert out == raw.replace(b'"model":"chat"', b'"model":"new"')


def test_nested_model_keys_are_left_untouched() -> None:
    raw = b'{"metadata":{"model":"keep"},"messages":[{"role":"user","model":"keep2"}],"model":"chat"}'
    out = json.loads(parse_chat_request(raw).body_for("new"))
    assert out["metadata"]["model"] == "keep"
    assert out["messages"][0]["model"] == "keep2"
    assert out["model"] == "new"


def test_replacement_model_with_quotes_and_unicode_is_escaped_correctly() -> None:
    request = parse_chat_request(body())
    for model in ('we"ird\\name', "mod\u00e8le-\u6a21\u578b", "tab\there"):
        assert json.loads(request.body_for(model))["model"] == model


def test_unknown_vendor_fields_survive() -> None:
    raw = body(conversation_id="c-1", executable_data={"x": [1, 2]}, thought=None, stream_options={"a": 1})
    out = json.loads(parse_chat_request(raw).body_for("asi1-mini"))
    assert out == {**json.loads(raw), "model": "asi1-mini"}


def test_body_for_a_mapping_request_is_valid_json() -> None:
    request = parse_chat_request({"model": "chat", "messages": MESSAGES, "temperature": 0.5})
    assert json.loads(request.body_for("up")) == {"model": "up", "messages": MESSAGES, "temperature": 0.5}


def test_model_key_written_with_escapes_falls_back_to_reencoding() -> None:
    raw = b'{"mod\\u0065l":"chat","messages":[{"role":"user"}]}'
    request = parse_chat_request(raw)
    assert request.model == "chat"
    assert json.loads(request.body_for("up")) == {"model": "up", "messages": [{"role": "user"}]}


def test_duplicate_top_level_model_is_refused() -> None:
    error = invalid(b'{"model":"chat","messages":[{"role":"user"}],"model":"gpt-4-expensive"}')
    assert error.param == "model"


def test_duplicate_top_level_model_spelled_with_an_escape_is_refused() -> None:
    error = invalid(b'{"model":"route-a","mod\\u0065l":"chat","messages":[{"role":"user"}]}')
    assert error.param == "model"


def test_same_key_nested_twice_is_not_a_duplicate() -> None:
    raw = b'{"model":"chat","a":{"model":1,"model":2},"messages":[{"role":"user"}]}'
    assert parse_chat_request(raw).model == "chat"


# --- validation --------------------------------------------------------------------------------

@pytest.mark.parametrize("raw", [b"", b"{", b"not json", b'{"model": "chat",}', b"\xff\xfe{}"])
def test_invalid_json_is_refused(raw: bytes) -> None:
    error = invalid(raw)
    assert "JSON" in error.message
    assert error.param is None


@pytest.mark.parametrize("raw", [b"[]", b'"chat"', b"42", b"null", b"[{\"model\": \"chat\"}]"])
def test_non_object_body_is_refused(raw: bytes) -> None:
    assert "object" in invalid(raw).message


@pytest.mark.parametrize("model", [None, "", 5, ["chat"], {"name": "chat"}])
def test_missing_or_non_string_model_names_the_param(model: object) -> None:
    payload: dict[str, Any] = {"messages": MESSAGES}
    if model is not None:
        payload["model"] = model
    assert invalid(json.dumps(payload).encode()).param == "model"


@pytest.mark.parametrize("messages", [None, [], "hi", {"role": "user"}, 3])
def test_missing_or_empty_messages_names_the_param(messages: object) -> None:
    payload: dict[str, Any] = {"model": "chat"}
    if messages is not None:
        payload["messages"] = messages
    assert invalid(json.dumps(payload).encode()).param == "messages"


@pytest.mark.parametrize("bad", ["hello", {"content": "no role"}, {"role": 1}, None])
def test_malformed_message_names_its_index(bad: object) -> None:
    assert invalid(body(messages=[MESSAGES[0], bad])).param == "messages[1]"


@pytest.mark.parametrize("value", ["yes", 1, 0, [], {}])
def test_non_boolean_stream_is_refused(value: object) -> None:
    assert invalid(body(stream=value)).param == "stream"


@pytest.mark.parametrize(("value", "expected"), [(True, True), (False, False), (None, False)])
def test_stream_flag(value: object, expected: bool) -> None:
    assert parse_chat_request(body(stream=value)).stream is expected
    assert parse_chat_request(body()).stream is False


@pytest.mark.parametrize("key", ["max_tokens", "max_completion_tokens"])
@pytest.mark.parametrize("value", [0, -1, True, "10", 1.5])
def test_non_positive_integer_token_caps_are_refused(key: str, value: object) -> None:
    assert invalid(body(**{key: value})).param == key


def test_max_completion_tokens_is_used_when_max_tokens_is_absent() -> None:
    assert parse_chat_request(body(max_completion_tokens=77)).max_tokens == 77
    assert parse_chat_request(body(max_tokens=5, max_completion_tokens=77)).max_tokens == 5


def test_unserialisable_mapping_is_refused() -> None:
    assert "JSON" in invalid({"model": "chat", "messages": MESSAGES, "x": {1, 2}}).message


def test_mapping_input_is_validated_like_bytes() -> None:
    assert invalid({"model": "chat"}).param == "messages"


# --- token estimate, ids, continuation ---------------------------------------------------------

def test_token_estimate_is_prompt_chars_over_four_plus_the_completion_cap() -> None:
    raw = body(max_tokens=100)
    assert parse_chat_request(raw).token_estimate == len(raw) // 4 + 100


def test_token_estimate_without_a_cap_uses_the_default_completion_estimate() -> None:
    raw = body(messages=[{"role": "user", "content": "x" * 4000}])
    assert parse_chat_request(raw).token_estimate == len(raw) // 4 + DEFAULT_COMPLETION_ESTIMATE


@pytest.mark.parametrize("value", ["abc", "req-123_4.5:6", "A" * 128, "0"])
def test_safe_request_ids_are_kept(value: str) -> None:
    assert clean_request_id(value) == value
    assert parse_chat_request(body(), request_id=value).request_id == value


@pytest.mark.parametrize("value", [None, "", "has space", "A" * 129, "\u00e9t\u00e9", "a\r\nInjected: 1",
                                   "semi;colon", "slash/no"])
def test_unsafe_or_missing_request_ids_are_replaced(value: str | None) -> None:
    generated = clean_request_id(value)
    assert generated != value
    assert re.fullmatch(r"[0-9a-f]{32}", generated)


def test_request_id_with_a_trailing_newline_is_replaced() -> None:
    assert clean_request_id("abc\n") != "abc\n"


def test_generated_request_ids_are_unique() -> None:
    assert len({clean_request_id(None) for _ in range(100)}) == 100


def test_continuation_body_appends_the_text_so_far_as_an_assistant_message() -> None:
    raw = body(temperature=0.2, stream=True, metadata={"k": "v"})
    request = parse_chat_request(raw)
    out = json.loads(request.continuation_body("asi1-mini", "The answer is"))
    assert out["model"] == "asi1-mini"
    assert out["messages"] == [*MESSAGES, {"role": "assistant", "content": "The answer is"}]
    assert out["temperature"] == 0.2 and out["stream"] is True and out["metadata"] == {"k": "v"}
    # The request itself is immutable: nothing was appended to it.
    assert request.payload["messages"] == MESSAGES
    assert request.body == raw


# --- property: body_for changes exactly the model ----------------------------------------------

RESERVED = {"model", "messages", "stream", "max_tokens", "max_completion_tokens"}
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-10**20, max_value=10**20)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=12,
)
models = st.text(min_size=1, max_size=40) | st.sampled_from([AIMO_MODEL, "asi1-mini", "a/b:c", "{model}"])
messages = st.lists(
    st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant"])},
                          optional={"content": json_values, "model": json_values}),
    min_size=1, max_size=3,
)


@st.composite
def request_objects(draw: st.DrawFn) -> dict[str, Any]:
    extras = draw(st.dictionaries(st.text(max_size=10).filter(lambda k: k not in RESERVED), json_values,
                                  max_size=5))
    items = list(extras.items())
    items.insert(draw(st.integers(0, len(items))), ("model", draw(models)))
    items.insert(draw(st.integers(0, len(items))), ("messages", draw(messages)))
    return dict(items)


dump_styles = st.fixed_dictionaries({
    "indent": st.sampled_from([None, 0, 2, "\t"]),
    "separators": st.sampled_from([None, (",", ":"), (" , ", " : "), (",\n", ":\t")]),
    "ensure_ascii": st.booleans(),
})


@settings(max_examples=300, deadline=None)
@given(payload=request_objects(), style=dump_styles, new_model=models)
@pytest.mark.slow
def test_body_for_changes_only_the_model(payload: dict[str, Any], style: dict[str, Any], new_model: str) -> None:
    raw = json.dumps(payload, **style).encode()
    request = parse_chat_request(raw)
    assert request.model == payload["model"]
    out = request.body_for(new_model)
    assert json.loads(out) == {**payload, "model": new_model}
    if not style["ensure_ascii"]:
        # Splicing the original name back in restores the client's exact bytes.
        assert parse_chat_request(out).body_for(payload["model"]) == raw


def test_model_is_found_among_many_nested_model_keys() -> None:
    nested = ", ".join(f'{{"role": "user", "content": "x", "model": "n{i}"}}' for i in range(50))
    raw = f'{{"messages": [{nested}], "model": "chat", "note": "\\"model\\": no"}}'.encode()
    request = parse_chat_request(raw)
    replaced = json.loads(request.body_for("up"))
    assert replaced["model"] == "up"
    assert [m["model"] for m in replaced["messages"]] == [f"n{i}" for i in range(50)]


def test_model_key_inside_a_string_value_is_not_the_model() -> None:
    raw = b'{"messages": [{"role": "user", "content": "{\\"model\\": 1} \\"model\\""}], "model": "chat"}'
    replaced = json.loads(parse_chat_request(raw).body_for("up"))
    assert replaced["model"] == "up"
    assert replaced["messages"][0]["content"] == '{"model": 1} "model"'


# --- orjson and json must decide every body alike ---------------------------------------------------

_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(10**30), max_value=10**30) | st.floats() | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=12,
)
_FIELDS = st.fixed_dictionaries({}, optional={
    "model": st.sampled_from(["m", "", 7]) | _VALUES,
    "messages": st.sampled_from([[{"role": "user", "content": "hi"}], [], [{"content": "x"}]]) | _VALUES,
    "stream": st.sampled_from([True, False, None, "yes"]),
    "max_tokens": st.sampled_from([1, 0, 10**20, 2**64 - 1, 2**64, 1.5, True]) | _VALUES,
    "max_completion_tokens": st.integers(min_value=-3, max_value=10**25),
    "seed": _VALUES,
})


def _outcome(raw: bytes) -> object:
    try:
        request = parse_chat_request(raw)
    except InvalidRequest as exc:
        return ("refused", str(exc), exc.param)
    return ("ok", request.model, request.stream, request.max_tokens, request.body, request._model_span)


@given(_FIELDS, st.integers(min_value=0, max_value=3))
def test_orjson_and_json_decide_every_request_alike(fields: dict, nesting: int) -> None:
    body = fields if not nesting else {**fields, "deep": functools.reduce(lambda v, _: [v], range(nesting), 1)}
    raw = json.dumps(body).encode()  # NaN and Infinity included: json writes them, orjson refuses them
    fast = _outcome(raw)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(request_module, "_ORJSON_MAX_BRACKETS", -1)  # json only
        assert _outcome(raw) == fast


def _nested(depth: int) -> bytes:
    return b'{"model": "m", "messages": [{"role": "user", "content": ' + b"[" * depth + b"]" * depth + b"}]}"


def test_the_deepest_body_orjson_decodes_is_decided_as_json_decides_it() -> None:
    depth = request_module._ORJSON_MAX_BRACKETS - 3  # plus the body's own `{`, `[` and `{`
    raw = _nested(depth)
    assert raw.count(b"[") + raw.count(b"{") == request_module._ORJSON_MAX_BRACKETS  # orjson's path
    fast = _outcome(raw)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(request_module, "_ORJSON_MAX_BRACKETS", -1)
        assert _outcome(raw) == fast


@pytest.mark.parametrize(("depth", "accepted"), [(600, True), (5000, False)])
def test_deeper_bodies_are_decided_by_json(depth: int, accepted: bool) -> None:
    # Past the bracket limit json decides alone: nesting it can follow is accepted, deeper is refused.
    outcome = _outcome(_nested(depth))
    assert outcome[0] == ("ok" if accepted else "refused"), outcome
