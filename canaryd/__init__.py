"""canaryd: GitOps progressive delivery for KServe InferenceServices."""

__version__ = "0.1.0"
