"""Models: the zoo, optimisation, checkpoints, metrics, and the exported model's contract and sessions."""
