"""Kafka adapters (scale mode, the ``scale`` extra): the ledger as a topic written with an
idempotent ``acks=all`` producer (:mod:`.ledger`), and its partitions read by the sink workers
(:mod:`.partitions`). Exactly-once does not lean on Kafka transactions: it rests on the event
key (namespace, source, id) and on the sink's recorded batch ranges."""
