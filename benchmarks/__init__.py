"""Benchmarks: each module measures one thing against a baseline measured in the same run."""
