"""The admin listener (`server.admin`): live state, the status page, and the operator's actions.

It listens on its own address (loopback by default), never on the clients' port:

- `GET /admin/` the status page (one self-contained HTML file, admin_page.py);
- `GET /admin/state` the snapshot (admin_state.py);
- `POST /admin/providers/{name}/drain` no new requests go to the provider (in-flight ones finish);
  `POST /admin/providers/{name}/restore` undoes it; a reload keeps drains;
- `POST /admin/reload` reloads the policy file, as SIGHUP does, and answers with the result.

With `key_env` every request but the page itself needs `Authorization: Bearer <key>` (the page asks
for the key and sends it); the check compares SHA-256 digests in constant time; a missing or wrong key
gets a 401. Without a key (allowed on loopback only) anyone who can reach the port is an operator.
Every action is logged with who did it: the peer address, whether a key was used, and the optional
`X-Operator` header (a name, for the audit trail; never trusted for access).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from router.policy.model import AdminPolicy
from router.server.admin_page import PAGE
from router.server.admin_state import snapshot
from router.server.context import ServerContext

log = logging.getLogger("router.admin")

_MAX_OPERATOR = 64
Reload = Callable[[], Awaitable[bool] | bool]


def create_admin_app(context: ServerContext, reload: Reload) -> web.Application:
    app = web.Application(middlewares=[_errors], client_max_size=16 * 1024)
    handlers = _Handlers(context, reload)
    app.router.add_get("/admin/", handlers.page)
    app.router.add_get("/admin", _to_page)
    app.router.add_get("/admin/state", handlers.state)
    app.router.add_post("/admin/providers/{name}/drain", handlers.drain)
    app.router.add_post("/admin/providers/{name}/restore", handlers.restore)
    app.router.add_post("/admin/reload", handlers.reload)
    return app


async def _to_page(request: web.Request) -> web.StreamResponse:
    raise web.HTTPFound("/admin/")  # the page fetches `state` relative to /admin/


class _Handlers:
    def __init__(self, context: ServerContext, reload: Reload) -> None:
        self._context = context
        self._reload = reload

    async def page(self, request: web.Request) -> web.Response:
        # The page holds no state and no secret: it fetches /admin/state with the key the operator types.
        return web.Response(text=PAGE, content_type="text/html", headers=_NO_STORE)

    async def state(self, request: web.Request) -> web.Response:
        self._authorize(request)
        return _json(200, snapshot(self._context))

    async def drain(self, request: web.Request) -> web.Response:
        return self._set_drained(request, drained=True)

    async def restore(self, request: web.Request) -> web.Response:
        return self._set_drained(request, drained=False)

    async def reload(self, request: web.Request) -> web.Response:
        who = self._authorize(request)
        result = self._reload()
        ok = await result if not isinstance(result, bool) else result
        context = self._context
        log.warning("admin: reload by %s: %s", who, "ok" if ok else f"refused ({context.last_reload_error})")
        return _json(200 if ok else 422, {"reloaded": ok, "sha256": context.policy_sha256,
                                          "error": None if ok else context.last_reload_error})

    def _set_drained(self, request: web.Request, *, drained: bool) -> web.Response:
        who = self._authorize(request)
        name = request.match_info["name"]
        router = self._context.router
        if name not in router.policy.providers:
            raise _problem(404, f"no provider named {name!r}; the policy has: "
                                f"{', '.join(sorted(router.policy.providers))}", "provider_not_found")
        ledger = router.ledger
        (ledger.drained.add if drained else ledger.drained.discard)(name)
        log.warning("admin: %s provider %s by %s", "drain" if drained else "restore", name, who)
        return _json(200, {"provider": name, "drained": drained,
                           "in_flight": ledger.provider_in_flight(name)})

    def _authorize(self, request: web.Request) -> str:
        """Who is asking, for the log; a 401 unless the key matches (or no key is configured)."""
        admin = self._context.router.policy.server.admin or AdminPolicy()
        peer = request.remote or "?"
        operator = _operator(request.headers.get("X-Operator"))
        suffix = f" ({operator})" if operator else ""
        if admin.key is None:
            return f"{peer} without a key{suffix}"
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        expected = hashlib.sha256(admin.key.encode()).digest()
        offered = hashlib.sha256(given.strip().encode()).digest()
        if scheme.lower() != "bearer" or not hmac.compare_digest(offered, expected):
            log.warning("admin: refused %s %s from %s: missing or wrong key", request.method, request.path, peer)
            raise _problem(401, "this admin API needs `Authorization: Bearer <key>` (the key in the variable "
                                "named by server.admin.key_env)", "invalid_admin_key",
                           headers={"WWW-Authenticate": 'Bearer realm="llm-router admin"'})
        return f"{peer} with the admin key{suffix}"


def _operator(value: str | None) -> str:
    if not value:
        return ""
    return "".join(ch for ch in value[:_MAX_OPERATOR] if ch.isprintable())


_NO_STORE = {"Cache-Control": "no-store"}


def _json(status: int, body: dict[str, Any]) -> web.Response:
    return web.Response(status=status, text=json.dumps(body), content_type="application/json", headers=_NO_STORE)


class _Problem(Exception):
    """A refusal, answered by `_errors` as OpenAI-style error JSON."""

    def __init__(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        super().__init__(status)
        self.status, self.body, self.headers = status, body, headers or {}


def _problem(status: int, message: str, code: str, headers: dict[str, str] | None = None) -> _Problem:
    kind = "authentication_error" if status == 401 else "invalid_request_error"
    return _Problem(status, {"error": {"message": message, "type": kind, "param": None, "code": code}}, headers)


@web.middleware
async def _errors(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                  ) -> web.StreamResponse:
    """Every error as OpenAI-style JSON, aiohttp's own 404 and 405 included."""
    try:
        return await handler(request)
    except _Problem as problem:
        response = _json(problem.status, problem.body)
        response.headers.update(problem.headers)
        return response
    except web.HTTPException as exc:
        if exc.status >= 400:
            return _json(exc.status, {"error": {"message": exc.reason, "type": "invalid_request_error",
                                                "param": None, "code": None}})
        raise
