"""Hugging Face Hub: download and publish."""
