"""GGUF reading and browsing (the reader itself moves here in the architecture step)."""
