"""Training loops shared by the stages: next-token learning on masked targets (lm), metrics."""
