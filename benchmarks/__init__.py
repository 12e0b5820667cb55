"""Benchmarks of issue 5: ``python3 -m benchmarks.run`` (see benchmarks/README.md)."""
