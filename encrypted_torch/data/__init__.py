"""Encrypted datasets and loaders (server side)."""

from .dataset import DataLoader, EncBatch, EncDataset, KeptLabels

__all__ = ["DataLoader", "EncBatch", "EncDataset", "KeptLabels"]
