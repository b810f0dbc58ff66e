"""Prefect flows that order the DVC stages, gate, approve and publish (ARCHITECTURE §8).

This package imports no torch: it runs stages through `dvc repro` in a subprocess.
"""
