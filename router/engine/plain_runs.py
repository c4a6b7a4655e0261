"""A run of stream events checked in one pass: the relay's per-read shortcut.

The relay checks every event after the commit point: a malformed one is skipped, an error ends the
stream, a `finish_reason`, usage, tool calls or a second choice change what the transcript knows.
Most events of a burst are none of these: plain content deltas. `plain_text` proves that for a
whole `SseRun` at once, with msgspec decoding the run's payloads (one per line) into types that
admit only such deltas: `null` or absent for everything else, index 0, text content. A decode
that succeeds means each event would have passed the per-event checks with no effect but its
text and its count; anything else (one malformed event, an error, a finish) and the caller
checks the run event by event as before. msgspec rejects whatever orjson and `json` would both
reject, and a few things they accept (NaN, lone surrogates, nesting past 1,000 levels), which
then take the per-event path: never the other way around (tests/unit/test_plain_runs.py).

Measured on this machine: ~0.8 µs per event (the parser's line split, the one-value-a-line check, the decode, the text),
against ~2 µs for the per-event path (bench/README.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import msgspec

from router.upstream.sse import DONE_EVENT, SseEvent, SseRun

Batch = list[SseEvent | SseRun]  # what one upstream read brought; a run is always last

# How many events at the end of a run that ends with [DONE] are checked one by one: the finish_reason,
# usage and [DONE] events a provider ends with, which the one-pass check would refuse.
_ENDING_EVENTS = 3


@dataclass(slots=True)
class Plain:
    """A run whose events were all shown to be plain content deltas, and their text."""

    run: SseRun
    texts: list[str]


class _Delta(msgspec.Struct, gc=False):
    content: str | None = None
    tool_calls: None = None
    function_call: None = None


class _Choice(msgspec.Struct, gc=False):
    index: Literal[0] = 0
    finish_reason: None = None
    delta: _Delta | None = None


class _Chunk(msgspec.Struct, gc=False):
    choices: list[_Choice] | None = None
    error: None = None
    usage: None = None


# gc=False: they hold no reference cycles (strings, and lists of each other), and a run of 2,000 events
# makes 8,000 of them, which would set off the garbage collector several times: 1.0 -> 0.4 µs an event.
_DECODER = msgspec.json.Decoder(_Chunk)


def plain_text(run: SseRun) -> list[str] | None:
    """The content of `run`'s events in order, if every one is a plain content delta; None otherwise."""
    lines = run.lines
    # decode_lines reads whitespace-separated values, not one value a line: `{}{}` is two, a blank line none,
    # and a value may go on over a line break. So every line must start with { and end with }: a value never
    # spans "}\n{" (a string holds no raw line break; in a container, } then { is invalid), so each line is
    # whole values, at least one, and as many values as lines means exactly one each.
    if lines[:1] != b"{" or lines[-1:] != b"}" or lines.count(b"}\n{") != run.count - 1:
        return None
    try:
        chunks = _DECODER.decode_lines(lines)
    except (msgspec.DecodeError, RecursionError):  # ValidationError is a DecodeError
        return None
    if len(chunks) != run.count:
        return None
    return [delta.content for chunk in chunks if chunk.choices for choice in chunk.choices
            if (delta := choice.delta) is not None and delta.content is not None]


def screen(batch: Batch, *, per_event: bool) -> list[SseEvent | Plain]:
    """`batch` with its run either shown plain in one pass (a `Plain`, the events at the end of a stream
    left out of it) or taken apart into events for the per-event checks (always, with `per_event`)."""
    run: SseRun = batch[-1]  # type: ignore[assignment]
    if per_event:
        return [*batch[:-1], *run.events()]  # type: ignore[list-item]
    head, tail = run.split_last(_ENDING_EVENTS) if run.raw.endswith(DONE_EVENT) else (run, [])
    texts = plain_text(head) if head is not None else None
    if texts is None and not tail and run.count > _ENDING_EVENTS:  # it may end with a finish: once more
        head, tail = run.split_last(_ENDING_EVENTS)
        texts = plain_text(head)  # type: ignore[arg-type]
    if texts is None:
        return [*batch[:-1], *run.events()]  # type: ignore[list-item]
    return [*batch[:-1], Plain(head, texts), *tail]  # type: ignore[arg-type, list-item]


def event_count(batch: Batch) -> int:
    final = batch[-1]
    return len(batch) + (final.count - 1 if final.__class__ is SseRun else 0)  # type: ignore[union-attr]
