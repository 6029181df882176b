"""moe-bench: decode-throughput benchmark for base and expert-pruned Mixture-of-Experts models."""

__version__ = "0.1.0"
