"""mpr: dynamic mixed-precision routing for multi-step LLM agents (JAX/Flax)."""

__version__ = "0.1.0"
