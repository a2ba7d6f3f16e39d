"""Real node processes of one run: the node program, the harness that spawns, signals
and stops them and collects their records, and the checker of those records. Shared by
``notifelect demo``, the fault suite and the benchmarks; not part of the public API."""
