"""The OpenAI-compatible daemon: a fast front for the common chat request, aiohttp.web for the rest,
both over the same thin handlers in front of the engine."""

from router.server.app import create_app
from router.server.front import FrontSite

__all__ = ["FrontSite", "create_app"]
