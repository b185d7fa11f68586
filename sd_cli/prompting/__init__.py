"""Prompt text to conditioning as AUTOMATIC1111 reads it: emphasis weights, BREAK, long prompts
in 75-token chunks, clip skip (prompts.py) and textual inversion embeddings (embeddings.py)."""
