"""The services sortflow talks to: MLflow tracking and registry, DVC, Great Expectations, Triton configs."""
