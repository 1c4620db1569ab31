"""Benchmarks: scripts that time itloop against its goals and against reference tools.

Each ``bench_*.py`` module exposes ``run(quick: bool = False) -> dict`` and a ``__main__``;
``python -m benchmarks.run_all`` runs them all and prints one table. Not part of the test suite.
"""
