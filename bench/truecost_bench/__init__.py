"""Benchmark and evaluation protocols. Not installed, never imported by src/: `truecost bench ...` loads
these modules from the repository's bench/ folder (``truecost.cli.bench.load_bench_module``)."""
