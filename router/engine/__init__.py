"""The request engine: plan, attempt, classify, decide; the JSON and streaming paths on top."""
