"""From a Hugging Face model to published APEX quants: the resumable pipeline."""
