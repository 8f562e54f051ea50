"""The engine: model loading, scheduling, sampling and detokenization."""
