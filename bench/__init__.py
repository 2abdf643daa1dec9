"""Benchmarks that print figures (never asserted as timed tests); see docs/PERFORMANCE.md."""
