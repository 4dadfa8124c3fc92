"""APEX Studio: mixed-precision GGUF quantization of Mixture-of-Experts models."""

from importlib import metadata as _metadata

try:
    __version__ = _metadata.version("apex-studio")
except _metadata.PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.1.0"
