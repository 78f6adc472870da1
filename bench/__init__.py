"""Benchmarks for dashboard-auth: where a login and a refresh stand, and what costs what.

    python -m bench              # everything, about 2-3 minutes on 2 shared cores; prints one table
    python -m bench refresh ...  # only the named benchmarks (refresh, login, cold, memory, throughput, profile)

Absolute times on shared machines are noise, so every figure is printed next to a floor measured
in the same run (same process where it can be), subject and floor measured in alternating batches
so that drift hits both, and the ratio figure/floor is what the targets are about.

Modules: world (the moto server, the fake TLS API servers in their own process via kube_servers, the
key, the registry, child processes), harness (inside a measured child: the Lambda-like container and
the floors), cold_child (one cold process), one module per benchmark (refresh_warm, login_warm,
cold_start, memory_size, throughput, profiles) and stats (percentiles, interleaving, the table).
Nothing here changes production code or writes outside bench/ and the temp directory.
"""

import sys as _sys

# The benchmarks write nothing into the project tree, bytecode caches included (children get
# PYTHONDONTWRITEBYTECODE=1 from bench.world).
_sys.dont_write_bytecode = True
