"""What runs: the Kafka inference service, the embedded pipeline, subscribers and the CLI."""
