"""Benchmarks (`fleetcmd bench …`): each prints a table and one JSON line of figures."""
