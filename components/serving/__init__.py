"""A local Triton server: its recorded state, its process and its health."""
