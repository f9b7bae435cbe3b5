"""Benchmarks for distreload against the bare app and fastapi-reloader 1.3.4: ``python benchmarks/run.py``."""
