"""What the router knows about its providers and clients: breakers, throttles, quotas and buckets,
the retry budget, and where that state lives (this process, or Redis for a fleet)."""
