"""Failover and scale benchmarks: ``python -m benchmarks`` (see ``run.py``)."""
