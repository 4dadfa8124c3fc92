"""Hugging Face checkpoints to GGUF with llama.cpp's own converter."""
