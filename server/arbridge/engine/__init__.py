"""The engine: one scheduler thread owning the model; batching, caches, sampling."""
