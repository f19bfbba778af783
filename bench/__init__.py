"""Benchmarks: the agent side by side with the reference tools, on the same data, in one run.

`python -m bench [SCENARIO...] [--quick] [--json]`; see bench/README.md.
"""
