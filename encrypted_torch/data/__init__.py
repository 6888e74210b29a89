"""Encrypted datasets and loaders (server side)."""

from .dataset import DataLoader, EncBatch, EncDataset

__all__ = ["DataLoader", "EncBatch", "EncDataset"]
