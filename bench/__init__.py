"""Benchmarks and campaigns for agent-coord. Run each as a module from the repository root:
`python -m bench.store_cas`, `python -m bench.e2e_allocate`, `python -m bench.validate_bench`,
`python -m bench.footprint`, `python -m bench.faults`. Results go to bench/results/ (gitignored)."""
