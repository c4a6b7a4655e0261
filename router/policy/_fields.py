"""Value checks for the policy loader: what a single key (or block of keys) may hold.

Each parser takes the raw value and its dotted key path, and either returns the
value converted to its model type or raises `Invalid`. The loader turns
`Invalid` into a `PolicyError` carrying the file name, so nothing here needs to
know where the data came from. The loader owns the schema (which keys each
section has), the environment and the cross-references.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

# A field parser: (raw value, key path) -> value for the dataclass.
Parser = Callable[[Any, str], Any]
# A cross-field check: (built dataclass, keys the file set, block path) -> None, or raise Invalid.
Check = Callable[[Any, Mapping[str, Any], str], None]

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_*:/?{}@+-]+")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 token
_SHA256_HEX = re.compile(r"[0-9a-fA-F]{64}")
_REDIS_SCHEMES = ("redis://", "rediss://", "unix://")
# The transport owns these: a policy that set them would break auth, framing or keep-alive.
_RESERVED_HEADERS = {
    "authorization": "is set by the router from `api_key_env`",
    "host": "is derived from `base_url`",
    "content-length": "is computed for each request body",
}
_HOP_BY_HOP_HEADERS = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection",
    "te", "trailer", "trailers", "transfer-encoding", "upgrade",
})
# Named faults of router.mock.RandomFaults, besides HTTP statuses. Policy code must not import the
# mock (imports flow downward); a test checks that the mock accepts every name listed here.
MOCK_FAULTS = ("reset", "hang", "slow", "cut", "stall", "malformed", "error_first")


class Invalid(Exception):
    """One problem in the policy data, at one key path."""

    def __init__(self, problem: str, path: str) -> None:
        super().__init__(problem)
        self.problem = problem
        self.path = path


# --- paths and messages ---------------------------------------------------


def join(path: str, key: object) -> str:
    """Append a mapping key; keys that would make the path ambiguous are quoted."""
    if isinstance(key, str):
        text = key if _PLAIN_KEY.fullmatch(key) else json.dumps(key)
    elif key is None or isinstance(key, bool | int | float):
        text = describe(key).split(" ")[0]  # null, true, 1, 1.5: as YAML wrote them
    else:
        text = f"<{type(key).__name__}>"
    return f"{path}.{text}" if path else text


def item(path: str, index: int) -> str:
    return f"{path}[{index}]"


def describe(value: object) -> str:
    """Render a bad value for an error message: short, YAML-flavoured, never huge."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"{str(value).lower()} (a boolean)"
    if isinstance(value, str):
        text = json.dumps(value)
        return text if len(text) <= 60 else text[:57] + '..."'
    if isinstance(value, int | float):
        text = repr(value)
        return text if len(text) <= 40 else text[:37] + "..."
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    return f"a value of type {type(value).__name__}"


def suggestion(word: str, candidates: Iterable[str]) -> str:
    """' (did you mean `x`?)' when a candidate is close to `word`, else ''."""
    options = {candidate.lower(): candidate for candidate in candidates}
    close = difflib.get_close_matches(word.lower(), list(options), n=1, cutoff=0.6)
    return f" (did you mean `{options[close[0]]}`?)" if close else ""


def listing(names: Iterable[str]) -> str:
    return ", ".join(f"`{name}`" for name in names) or "(none)"


# --- containers -----------------------------------------------------------


def mapping(value: object, path: str, what: str = "a mapping") -> Mapping[Any, Any]:
    if not isinstance(value, Mapping):
        raise Invalid(f"must be {what}, got {describe(value)}", path)
    return value


def sequence(value: object, path: str, what: str = "a list") -> Sequence[Any]:
    if not isinstance(value, list | tuple):
        raise Invalid(f"must be {what}, got {describe(value)}", path)
    return value


def section(value: object, path: str) -> Mapping[Any, Any]:
    """A nested block such as `timeouts:`. Written empty (null) it means "all defaults"."""
    return {} if value is None else mapping(value, path)


def fields(data: Mapping[Any, Any], path: str, parsers: Mapping[str, Parser],
           required: Sequence[str] = ()) -> dict[str, Any]:
    """Parse every key of `data` in file order with its parser; unknown keys are errors.

    Returns only the keys that were present, so the dataclass supplies every default.
    """
    values: dict[str, Any] = {}
    for key, raw in data.items():
        if not isinstance(key, str):
            raise Invalid(f"keys must be strings, got {describe(key)}", join(path, key))
        parser = parsers.get(key)
        if parser is None:
            raise Invalid(unknown_key_message(key, parsers), join(path, key))
        values[key] = parser(raw, join(path, key))
    for key in required:
        if key not in values:
            raise Invalid("is required", join(path, key))
    return values


def unknown_key_message(key: str, known: Iterable[str]) -> str:
    known = sorted(known)
    hint = suggestion(key, known)
    return f"unknown key `{key}`{hint}" if hint else f"unknown key `{key}`; expected one of {listing(known)}"


# --- scalars --------------------------------------------------------------


def string(value: object, path: str) -> str:
    """A non-empty string. YAML turns bare `yes`, `12` or `null` into other types: quote them."""
    if not isinstance(value, str):
        raise Invalid(f"must be a string, got {describe(value)}", path)
    if not value.strip():
        raise Invalid("must not be empty", path)
    return value


def boolean(value: object, path: str) -> bool:
    if not isinstance(value, bool):
        raise Invalid(f"must be true or false, got {describe(value)}", path)
    return value


def integer(value: object, path: str, *, ge: int | None = None, le: int | None = None) -> int:
    # bool is an int subclass in Python, but `max_attempts: true` is a mistake, not a 1.
    if isinstance(value, bool) or not isinstance(value, int):
        raise Invalid(f"must be an integer, got {describe(value)}", path)
    if ge is not None and value < ge:
        raise Invalid(f"must be >= {ge}, got {describe(value)}", path)
    if le is not None and value > le:
        raise Invalid(f"must be <= {le}, got {describe(value)}", path)
    return value


def number(value: object, path: str, *, gt: float | None = None, ge: float | None = None,
           le: float | None = None) -> float:
    """A finite real number; ints are accepted and converted, so the model always holds floats."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Invalid(f"must be a number, got {describe(value)}", path)
    try:
        result = float(value)
    except OverflowError:
        raise Invalid(f"is too large, got {describe(value)}", path) from None
    if not math.isfinite(result):
        raise Invalid(f"must be a finite number, got {describe(value)}", path)
    shown = plain(result)
    if gt is not None and result <= gt:
        raise Invalid(f"must be > {plain(gt)}, got {shown}", path)
    if ge is not None and result < ge:
        raise Invalid(f"must be >= {plain(ge)}, got {shown}", path)
    if le is not None and result > le:
        raise Invalid(f"must be <= {plain(le)}, got {shown}", path)
    return result


def choice(value: object, path: str, options: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in options:
        hint = suggestion(value, options) if isinstance(value, str) else ""
        raise Invalid(f"must be one of {listing(options)}, got {describe(value)}{hint}", path)
    return value


def env_name(value: object, path: str) -> str:
    name = string(value, path)
    if not _ENV_NAME.fullmatch(name):
        # Not echoed: what lands here instead of a variable name is often the key itself.
        raise Invalid("must be an environment variable name (letters, digits, _) such as AIMO_API_KEY, not "
                      "the key itself; the value is not shown in case it is one", path)
    return name


def secret_env(env: Mapping[str, str], value: object, path: str) -> str:
    """The name of an environment variable that must hold a secret (an API key, a client key)."""
    name = env_name(value, path)
    secret = env.get(name)
    if secret is None:
        raise Invalid(f"environment variable {name} is not set", path)
    if not secret:
        raise Invalid(f"environment variable {name} is not set (it is empty)", path)
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in secret):
        # It goes into an Authorization header, where a line break would start another header.
        raise Invalid(f"environment variable {name} contains a line break or other control character "
                      "(the value is not shown)", path)
    return name


def optional(parser: Parser) -> Parser:
    """Wrap a parser for a field whose default is None, so an explicit `null` means "unset"."""

    def parse(value: object, path: str) -> Any:
        return None if value is None else parser(value, path)

    return parse


def plain(value: float) -> str:
    """5.0 -> '5', 0.25 -> '0.25': messages echo what the user wrote."""
    value = float(value)  # the bounds passed in are often ints, and int.is_integer() needs 3.12
    return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)


# --- ranges, blocks and domain values ------------------------------------------


def positive(value: object, path: str) -> float:
    return number(value, path, gt=0)


def non_negative(value: object, path: str) -> float:
    return number(value, path, ge=0)


def at_least_one(value: object, path: str) -> int:
    return integer(value, path, ge=1)


def check_order(obj: object, given: Mapping[str, Any], low: str, high: str, path: str) -> None:
    """`high` must not be below `low`; blame whichever of the two the file actually set."""
    low_value, high_value = getattr(obj, low), getattr(obj, high)
    if high_value >= low_value:
        return
    if high in given:
        raise Invalid(f"must be >= {low} ({plain(low_value)}), got {plain(high_value)}", join(path, high))
    raise Invalid(f"must be <= {high} ({plain(high_value)}, the default), got {plain(low_value)}",
                  join(path, low))


def named_entries(value: object, path: str, what: str) -> list[tuple[str, Any, str]]:
    """(name, raw, path) for a non-empty `name: {...}` section such as `providers`."""
    entries = mapping(value, path, f"a mapping of {what} names to settings")
    if not entries:
        raise Invalid(f"must define at least one {what}", path)
    result = []
    for name, raw in entries.items():
        entry_path = join(path, name)
        if not isinstance(name, str) or not name.strip():
            raise Invalid(f"{what} names must be non-empty strings, got {describe(name)}", entry_path)
        result.append((name, raw, entry_path))
    return result


def base_url(value: object, path: str) -> str:
    # The URL is not echoed back: it could carry credentials.
    url = string(value, path)
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a malformed port
    except ValueError:
        raise Invalid("is not a valid URL", path) from None
    if parts.scheme not in ("http", "https") or not parts.hostname or any(ch.isspace() for ch in url):
        raise Invalid("must be an http:// or https:// URL with a host, e.g. https://api.asi1.ai/v1", path)
    if parts.username is not None or parts.password is not None:
        raise Invalid("must not contain credentials; put the key in an environment variable "
                      "named by `api_key_env`", path)
    if parts.query or parts.fragment:
        raise Invalid("must not contain a query or fragment (`/chat/completions` is appended to it)", path)
    return url.rstrip("/")


def headers(value: object, path: str) -> Mapping[str, str]:
    seen: dict[str, str] = {}
    lowered_seen: set[str] = set()
    for name, header_value in section(value, path).items():
        header_path = join(path, name)
        if not isinstance(name, str) or not _HEADER_NAME.fullmatch(name):
            raise Invalid(f"is not a valid HTTP header name: {describe(name)}", header_path)
        lowered = name.lower()
        if lowered in _RESERVED_HEADERS:
            raise Invalid(f"header `{name}` may not be set here: it {_RESERVED_HEADERS[lowered]}",
                          header_path)
        if lowered in _HOP_BY_HOP_HEADERS:
            raise Invalid(f"header `{name}` is hop-by-hop and managed by the HTTP client; remove it",
                          header_path)
        if lowered in lowered_seen:
            raise Invalid("is set twice (header names are case-insensitive)", header_path)
        # Values are not echoed: custom headers often carry tokens.
        if not isinstance(header_value, str):
            raise Invalid(f"must be a string (quote it), got a {type(header_value).__name__}", header_path)
        # CR/LF would let a value smuggle in another header; other controls are invalid HTTP.
        if any((ord(ch) < 32 and ch != "\t") or ord(ch) == 127 for ch in header_value):
            raise Invalid("must not contain line breaks or other control characters", header_path)
        seen[name] = header_value
        lowered_seen.add(lowered)
    return MappingProxyType(seen)


def block(cls: type, parsers: Mapping[str, Parser], check: Check | None = None) -> Parser:
    """Parser for a nested block whose keys are exactly the dataclass fields listed in `parsers`."""

    def parse(value: object, path: str) -> Any:
        given = fields(section(value, path), path, parsers)
        obj = cls(**given)
        if check is not None:
            check(obj, given, path)
        return obj

    return parse


def redis_url(value: object, path: str) -> str:
    url = string(value, path)  # not echoed: it may hold a password
    if not url.startswith(_REDIS_SCHEMES) or url in _REDIS_SCHEMES:
        raise Invalid("must be a redis://, rediss:// or unix:// URL", path)
    return url


def key_sha256(value: object, path: str) -> str:
    digest = string(value, path)
    if not _SHA256_HEX.fullmatch(digest):
        raise Invalid(f"must be 64 hexadecimal characters (a SHA-256 digest), got {len(digest)} characters",
                      path)
    return digest.lower()


def is_loopback_url(url: str) -> bool:
    return is_loopback_host(urlsplit(url).hostname or "")


def is_loopback_host(host: str) -> bool:
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def error_rates(value: object, path: str) -> Mapping[str, float]:
    """Mock fault probabilities: `{429: 0.2, reset: 0.05}`. YAML reads `429:` as an int; keep it a string."""
    rates: dict[str, float] = {}
    for key, raw in section(value, path).items():
        rate_path = join(path, key)
        name = str(key) if isinstance(key, int) and not isinstance(key, bool) else key
        if not isinstance(name, str) or not (name in MOCK_FAULTS or (name.isdigit() and 100 <= int(name) <= 599)):
            raise Invalid(f"unknown fault {describe(key)}; use an HTTP status (100-599) or one of "
                          f"{listing(MOCK_FAULTS)}", rate_path)
        if name in rates:
            raise Invalid(f"fault {name} is set twice", rate_path)
        rates[name] = number(raw, rate_path, ge=0, le=1)
    if sum(rates.values()) > 1 + 1e-9:
        raise Invalid(f"rates must add up to at most 1, got {plain(sum(rates.values()))}", path)
    return MappingProxyType(rates)


def retry_after(value: object, path: str) -> str:
    """A Retry-After header value: seconds (YAML reads `2` as an int) or an HTTP-date string."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(integer(value, path, ge=0))
    return string(value, path)
