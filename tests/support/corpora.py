"""The public corpora vendored in tests/data/corpora (see its README for sources and licences), read as data.

- `llhttp_vectors(kind)`: llhttp's request and response test vectors (test/request/*.md, test/response/*.md).
  Each input is decoded exactly as llhttp's own runner does (test/md-test.ts), and its log gives the
  verdict of llhttp's strict mode: how many messages were complete, and whether parsing ended in an error.
- `smuggling_gadgets()`: the Transfer-Encoding mutations of defparam/smuggler (configs/exhaustive.py and
  configs/doubles.py), each the header line(s) that replace a plain `Transfer-Encoding: chunked`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

CORPORA = Path(__file__).resolve().parent.parent / "data" / "corpora"

Kind = Literal["request", "response"]

_HEADING = re.compile(r"^#{2,6}\s+(.*)$")
_META = re.compile(r"^<!--\s*meta=(\{.*\})\s*-->\s*$")


@dataclass(frozen=True)
class Vector:
    source: str  # "request/content-length.md:7", where the input block starts
    name: str  # the heading above it
    kind: Kind
    data: bytes
    strict: bool  # llhttp ran it in strict mode; a lenient-mode vector's verdict says nothing about strict parsers
    messages: int  # messages llhttp parsed completely
    error: bool  # llhttp stopped on an error (after `messages` complete ones)
    upgrade: bool  # llhttp stopped after a CONNECT or Upgrade message: what follows is another protocol

    @property
    def id(self) -> str:
        return f"{self.source} {self.name}"


def llhttp_vectors(kind: Kind) -> list[Vector]:
    vectors: list[Vector] = []
    for path in sorted((CORPORA / "llhttp" / kind).glob("*.md")):
        vectors.extend(_vectors_of(path, kind))
    return vectors


def _vectors_of(path: Path, kind: Kind) -> list[Vector]:
    lines = path.read_text(encoding="utf-8").split("\n")
    found: list[Vector] = []
    heading, meta, index = "", None, 0
    pending: tuple[int, str] | None = None  # (line, raw input) waiting for its log
    while index < len(lines):
        line = lines[index]
        if match := _HEADING.match(line):
            heading = match.group(1).strip().replace("`", "")
        elif match := _META.match(line):
            meta = json.loads(match.group(1))
        elif line.startswith("```"):
            fence = line[3:].strip()
            end = lines.index("```", index + 1)
            block = "\n".join(lines[index + 1:end]) + "\n"
            if fence == "http" and meta is not None:
                pending = (index + 2, block)
            elif fence == "log" and pending is not None:
                assert meta is not None
                found.extend(_vector(path, kind, heading, meta, pending, block))
                pending, meta = None, None
            index = end
        index += 1
    return found


def _vector(path: Path, kind: Kind, heading: str, meta: dict[str, Any], pending: tuple[int, str],
            log: str) -> list[Vector]:
    mode = str(meta.get("type", ""))
    if not mode.startswith(kind) or meta.get("skip"):
        return []
    line, raw = pending
    upgrade = "error code=22 " in log  # HPE_PAUSED_UPGRADE: not an error, the end of HTTP on that connection
    # skipBody: the runner's callback told llhttp there is no body, which no real parser is told.
    strict = mode == kind and not meta.get("skipBody")
    return [Vector(source=f"{kind}/{path.name}:{line}", name=heading, kind=kind, data=decode_input(raw),
                   strict=strict, messages=log.count(" message complete"),
                   error=" error code=" in log and not upgrade, upgrade=upgrade)]


def decode_input(raw: str) -> bytes:
    """An input block as llhttp's runner (test/md-test.ts) turns it into bytes: the trailing newline and
    escaped newlines dropped, newlines made CRLF, then \\r \\n \\t \\f \\xNN and octal escapes replaced.
    The runner hands the string to the parser as UTF-8, so a \\xff becomes two bytes, as llhttp saw it."""
    text = raw[:-1] if raw.endswith("\n") else raw  # (JavaScript's /\n$/: only the very end)
    text = re.sub(r"\\(\r\n|\r|\n)", "", text)
    text = re.sub(r"\r\n|\r|\n", "\r\n", text)
    text = text.replace("\\r", "\r").replace("\\n", "\n").replace("\\t", "\t").replace("\\f", "\f")
    text = re.sub(r"\\x([0-9a-fA-F]+)", lambda m: chr(int(m.group(1), 16)), text)
    text = re.sub(r"\\([0-7]{1,3})", lambda m: chr(int(m.group(1), 8)), text)
    assert "${" not in text, "inline JavaScript in a vector: not supported"
    return text.encode("utf-8")


@dataclass(frozen=True)
class Gadget:
    name: str  # smuggler's own name, prefixed with its config file: "exhaustive/tabprefix1"
    lines: bytes  # the header line(s), without the final CRLF, encoded as the tool sends them (UTF-8)


class _Payload:
    """Stands in for smuggler's lib/Payload.py: its configs only set `header`."""

    header = ""


def smuggling_gadgets() -> list[Gadget]:
    """Every mutation, evaluated from smuggler's config files as that tool does (the files are its data:
    `render_template(gadget)` over loops of byte values); the gadget is the text between the request line
    and the Host header that `render_template` writes."""
    gadgets: list[Gadget] = []
    for config in ("exhaustive", "doubles"):
        source = (CORPORA / "smuggler" / f"{config}.py.txt").read_text(encoding="utf-8")
        namespace: dict[str, Any] = {"Payload": _Payload, "mutations": {}}
        exec(compile(source, f"smuggler/configs/{config}.py", "exec"), namespace)
        for name, payload in namespace["mutations"].items():
            header: str = payload.header
            start = header.index("\r\n") + 2
            end = header.index("\r\nHost: __HOST__\r\n")
            gadget = header[start:end]
            gadgets.append(Gadget(f"{config}/{name}", gadget.encode("utf-8")))
            if not gadget.isascii():  # and the raw byte, which the tool never sends but a hostile client may
                gadgets.append(Gadget(f"{config}/{name}/latin-1", gadget.encode("latin-1")))
    return gadgets
