"""Benchmark scripts; each prints ratios, none is a test."""
