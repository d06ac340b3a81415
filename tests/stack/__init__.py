"""The local scale stack: a Kafka-protocol broker (Tansu), a ClickHouse HTTP endpoint (the
ClickHouse engine from chdb behind :mod:`stack.chserver`), PostgreSQL and Redis, each on a free
127.0.0.1 port. ``./run stack up`` / ``./run stack down`` and the tests' session fixture start
the same thing (:mod:`stack.launch`)."""
