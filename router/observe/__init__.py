"""What the router reports about itself: the `Observer` seam and its Prometheus implementation."""
