"""faas-supervisor: an in-container runtime for serverless functions, OSCAR-compatible."""

__version__ = "0.1.0"
