"""Answers from the datamodels: influencers, train-test leakage, embeddings."""
