"""The Hardware & tiers dock and the Memory tab: GPUs and RAM, tiers that fit, memory bars and
per-device breakdown, RPC workers, quality rows of the tier table."""
