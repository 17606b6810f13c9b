"""Benchmarks of Release Pipeline beside what a user would otherwise pick, in one run.

Run `.venv/bin/python -m bench` (or `--quick` for a smoke run); see bench/__main__.py.
"""
