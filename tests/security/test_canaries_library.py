"""The library `Router`: no canary in the text, repr or traceback of anything it raises or returns.

An embedding service logs what the router raises (often with `log.exception`, or an
error tracker that walks the exception chain), so every exception of every scenario
goes to the leak watch as str, repr, args and the formatted traceback, along its
`__cause__`/`__context__` chain as a traceback would show it; `UpstreamError.body`
(the provider's last body) too.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from router import Router
from router.errors import PolicyError, RouterError, UpstreamError
from router.mock import FakeProvider, Hang, Reset, Status, Stream
from router.policy import parse_policy
from tests.security.canaries import ALPHA_KEY, BETA_KEY, CANARY_ENV, GAMMA_KEY, WEB_KEY, LeakWatch
from tests.security.scenarios import (
    ERROR_ANSWERS,
    assert_provider_saw_only_its_own_key,
    chunk,
    echoing_status,
    error_event,
    load,
    policy_yaml,
    sse,
    sse_answer,
)
from tests.server.helpers import chat_body


@pytest.fixture
async def library(fake_provider, leak_watch: LeakWatch) -> AsyncIterator[tuple[Router, FakeProvider, FakeProvider]]:
    alpha = await fake_provider("alpha", api_key=ALPHA_KEY)
    gamma = await fake_provider("gamma")
    beta = await fake_provider("beta", api_key=BETA_KEY)
    router = Router(load(policy_yaml(alpha, beta, gamma, first_byte_s=0.3, idle_s=0.3)))
    leak_watch.add("repr of the router's policy", repr(router.policy), str(router.policy))
    try:
        yield router, alpha, gamma
    finally:
        await router.aclose()
    assert_provider_saw_only_its_own_key(alpha, ALPHA_KEY)
    assert_provider_saw_only_its_own_key(gamma, GAMMA_KEY)


async def caught_from_chat(router: Router, watch: LeakWatch, model: str = "solo", **kwargs: object) -> RouterError:
    with pytest.raises(RouterError) as caught:
        await router.chat(chat_body(model=model), **kwargs)  # type: ignore[arg-type]
    watch.add_exception(f"chat({model!r}) raised", caught.value)
    if isinstance(caught.value, UpstreamError):
        watch.add("UpstreamError.body", caught.value.body)
    return caught.value


async def caught_from_stream(router: Router, watch: LeakWatch, model: str = "solo") -> tuple[list[bytes], RouterError]:
    relayed: list[bytes] = []
    with pytest.raises(RouterError) as caught:
        async with router.stream(chat_body(model=model, stream=True)) as stream:
            async for event in stream:
                relayed.append(event.raw)
    watch.add_exception(f"stream({model!r}) raised", caught.value)
    watch.add("events relayed by the stream", b"".join(relayed))
    return relayed, caught.value


@pytest.mark.parametrize(("status", "code"), ERROR_ANSWERS, ids=[f"{s}-{c}" for s, c in ERROR_ANSWERS])
async def test_errors_raised_for_an_echoing_provider_carry_no_key(library, leak_watch: LeakWatch, status: int,
                                                                  code: str | None) -> None:
    router, alpha, _ = library
    alpha.set_default(echoing_status(status, code, ALPHA_KEY))

    await caught_from_chat(router, leak_watch)
    await caught_from_stream(router, leak_watch)

    assert alpha.count in (1, 2)  # a 429 may keep the stream from being sent at all


@pytest.mark.parametrize("fault", [Reset(), Hang(), Status(302, body=b"", headers={"Location": "http://127.0.0.1:1/"})],
                         ids=["reset", "hang", "redirect"])
async def test_transport_failures_raise_clean_errors(library, leak_watch: LeakWatch, fault: object) -> None:
    router, alpha, _ = library
    alpha.set_default(fault)  # type: ignore[arg-type]
    error = await caught_from_chat(router, leak_watch)
    assert error.status in (502, 504)


async def test_stream_interrupted_after_the_commit_point(library, leak_watch: LeakWatch) -> None:
    router, alpha, _ = library
    alpha.script(Stream(cut_after=2))
    relayed, error = await caught_from_stream(router, leak_watch)
    assert relayed and error.code == "stream_interrupted"

    alpha.script(sse_answer(sse(chunk("Hi"), error_event("server_error", ALPHA_KEY)), ALPHA_KEY))
    await caught_from_stream(router, leak_watch)


async def test_refusals_raised_before_any_attempt(library, leak_watch: LeakWatch) -> None:
    router, alpha, _ = library
    await caught_from_chat(router, leak_watch, model=f"no-such-route-{WEB_KEY[:4]}")
    await caught_from_chat(router, leak_watch, model="solo", client="batch")  # route not allowed
    assert (await router.chat(chat_body(model="chat"), client="batch")).status == 200
    await caught_from_chat(router, leak_watch, model="chat", client="batch")  # over its burst of 1
    with pytest.raises(RouterError) as caught:
        await router.chat(b'{"model": "solo", "messages": []}')
    leak_watch.add_exception("invalid body", caught.value)
    assert alpha.count == 1


async def test_success_results_carry_no_key(library, leak_watch: LeakWatch) -> None:
    router, _, gamma = library
    result = await router.chat(chat_body(model="chat"), client="web")
    leak_watch.add("ChatResult", repr(result), result.body)
    gamma.set_default(echoing_status(401, "invalid_api_key", GAMMA_KEY))
    failed_over = await router.chat(chat_body(model="bad"))
    leak_watch.add("ChatResult after a 401", repr(failed_over), failed_over.body)
    assert failed_over.provider == "beta"


def test_policy_errors_raised_by_the_library_carry_no_key(tmp_path: Path, leak_watch: LeakWatch) -> None:
    valid = policy_yaml("http://127.0.0.1:9/v1", "http://127.0.0.1:9/v1", "http://127.0.0.1:9/v1")
    broken = {
        "pasted key": valid.replace("api_key_env: SEC_ALPHA_KEY", f"api_key_env: {ALPHA_KEY}"),
        "credentials in base_url": valid.replace("http://127.0.0.1", f"http://u:{BETA_KEY}@127.0.0.1", 1),
        "bad header value": valid.replace("supports_prefill: true",
                                          f'supports_prefill: true\n    headers: {{X-Key: "{GAMMA_KEY}\\r"}}', 1),
    }
    for mistake, text in broken.items():
        path = tmp_path / "policy.yaml"
        path.write_text(text, encoding="utf-8")
        with pytest.raises(PolicyError) as caught:
            Router.from_file(path)
        leak_watch.add_exception(f"Router.from_file with {mistake}", caught.value)
        with pytest.raises(PolicyError) as caught:
            parse_policy(text, env=CANARY_ENV)
        leak_watch.add_exception(f"parse_policy with {mistake}", caught.value)

    # A Redis URL with a password is kept (it is how Redis takes one) but never shown.
    redis = valid + f"state: {{backend: redis, url: 'redis://:{ALPHA_KEY}@127.0.0.1:6379/0'}}\n"
    policy = parse_policy(redis, env=CANARY_ENV)
    assert policy.state.url is not None and ALPHA_KEY in policy.state.url
    leak_watch.add("repr of a policy with a Redis password", repr(policy), repr(policy.state))
