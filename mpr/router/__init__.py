"""The precision router: its step table (data), KL-ST labels and ranking metrics (labels), the
Transformer over step embeddings (model), its supervised KL-ST trainer (sl) and the GRPO objective
(grpo)."""
