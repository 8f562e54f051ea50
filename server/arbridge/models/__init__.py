"""Resolving `--model` to a loaded model: Hugging Face folders, GGUF files, Megatron-LM
checkpoints, the default model; conversions published whole into the cache."""
