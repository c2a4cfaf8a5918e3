"""Data: readers -> records -> splits -> datasets/datamodules (data flows one way)."""
