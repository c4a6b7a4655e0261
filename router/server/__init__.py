"""The OpenAI-compatible daemon: thin aiohttp.web handlers in front of the engine."""

from router.server.app import create_app

__all__ = ["create_app"]
