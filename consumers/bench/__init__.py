"""``fusionstream bench``: the engine, the embedded pipeline, the Kafka service and a naive baseline,
measured side by side on one synthetic workload (see ``fusionstream.consumers.bench.run``)."""
