"""Quality per byte: measured quantization sensitivity and the plan optimizer that uses it."""
