"""The README's embedding example runs as written, against the demo providers it names."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from router.mock import FakeProvider

README = Path(__file__).resolve().parents[2] / "README.md"


def _embedding_example() -> str:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Embedding the router"):]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match, "the Embedding section has no python example"
    return match.group(1)


async def test_readme_embedding_example_runs_against_the_demo_providers(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    source = _embedding_example()
    # The example ends with asyncio.run(main()); inside pytest's loop we await main() instead.
    assert source.rstrip().endswith("asyncio.run(main())")
    namespace: dict[str, object] = {}
    exec(compile(source.rstrip().removesuffix("asyncio.run(main())"), str(README), "exec"), namespace)
    monkeypatch.chdir(README.parent)
    primary, backup = FakeProvider("demo-primary"), FakeProvider("demo-backup")
    await primary.start(port=9101)  # the ports policies/default.yaml names
    await backup.start(port=9102)
    try:
        await namespace["main"]()  # type: ignore[operator]
    finally:
        await primary.stop()
        await backup.stop()
    assert primary.count == 2  # one chat, one stream
    out = capsys.readouterr().out
    assert out.startswith("demo-primary 1 Hello from demo-primary")
    assert '"finish_reason": "stop"' in out or '"finish_reason":"stop"' in out
