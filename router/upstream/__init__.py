"""The hop to the providers: the transport (per-try timeouts, connection slots, scrubbing), the two
HTTP clients behind it, the failures they report, and the SSE parser for provider streams."""
