"""Benchmarks of nvp-live (quality and speed); results go to BENCHMARKS.md."""
