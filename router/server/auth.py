"""Client authentication: `Authorization: Bearer <key>` against the policy's clients.

Keys are compared as SHA-256 digests with `hmac.compare_digest`, against every
client without an early exit, so timing reveals neither a key nor which client
came close. Keys come from env vars or are stored as digests (`key_sha256`).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping

from router.policy.model import Policy


class ClientKeys:
    __slots__ = ("_digests", "open")

    def __init__(self, policy: Policy) -> None:
        digests: list[tuple[bytes, str]] = []
        for client in policy.clients:
            if client.key is not None:
                digests.append((hashlib.sha256(client.key.encode()).digest(), client.name))
            elif client.key_sha256 is not None:
                digests.append((bytes.fromhex(client.key_sha256), client.name))
        self._digests = tuple(digests)
        self.open = not policy.clients  # no clients configured: dev mode

    def identify(self, headers: Mapping[str, str]) -> str | None:
        """The client's name, or None when the key is missing or wrong."""
        header = headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        # aiohttp decodes header bytes that are not UTF-8 as lone surrogates: hash them back to those bytes
        # (a strict encode raised, and a stray byte in a key was a 500 instead of a 401).
        presented = hashlib.sha256(token.strip().encode("utf-8", "surrogateescape")).digest()
        found: str | None = None
        for digest, name in self._digests:
            if hmac.compare_digest(presented, digest) and found is None:
                found = name
        return found
