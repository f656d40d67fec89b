"""Benchmarks, fault runs and the soak run (make bench, make faults, make soak): scripts run as
``python bench/<name>.py``; their shared parts (``bench._gw``, ``bench._faults``, ...) are
imported as ``bench.*``, also by tests/faults."""
