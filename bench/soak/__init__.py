"""Helpers of bench/bench_soak.py: the clients' own record, and the daemon's process figures."""
