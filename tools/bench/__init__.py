"""Benchmarks of the plugin against raw aiormq on the same broker, in the same run.

Run ``bash tools/bench.sh`` (or ``python -m tools.bench --help`` for the counts)::

    bash tools/bench.sh --rounds 3 --memory 200000
"""
