"""Datasets: the ClsDataset format, decoding, digests, the expectation suite, the seeded split, loaders."""
