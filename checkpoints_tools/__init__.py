"""Hugging Face <-> megatron-core checkpoint conversion (import / export) for the HuatuoGPT-II architectures."""
