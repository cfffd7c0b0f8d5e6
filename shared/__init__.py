"""Code every LLM Guardian Cluster service imports: records, topics, settings, Kafka and Redis
clients, protos, metrics, logging and the embedded launcher."""
