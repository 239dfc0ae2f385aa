"""Helpers shared by keel's tests, demo and benchmarks (not used at run time)."""
