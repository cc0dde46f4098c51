"""Interoperability with other codes: import of published checkpoints."""
from .ecnn4klm import load_ecnn4klm

__all__ = ["load_ecnn4klm"]
