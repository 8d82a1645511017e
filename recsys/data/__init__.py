"""Data: ingest rules, metadata readers, interaction transforms, the dataset artifact, vocabularies and
the in-memory training/evaluation arrays built from a dataset."""
