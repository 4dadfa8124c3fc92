"""Where a model fits: hardware, memory, recommendation and llama.cpp RPC workers."""
