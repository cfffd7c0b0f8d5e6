"""The batcher: turns the priority request topics into micro-batches for the worker fleet."""
