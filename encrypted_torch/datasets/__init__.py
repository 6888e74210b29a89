"""Plaintext datasets as (features, labels) splits, ready to be encrypted by the client.

Loaders import their optional model packages lazily: digits needs only scikit-learn, MNIST the
`vision` extra and SNIPS the `text` extra.
"""

from .digits import load_digits_features
from .mnist import load_mnist_features
from .snips import SNIPS_INTENTS, load_snips_features, parse_snips_file, resolve_snips_dir
from .splits import FeatureSplits, stratified_partition

__all__ = [
    "SNIPS_INTENTS",
    "FeatureSplits",
    "load_digits_features",
    "load_mnist_features",
    "load_snips_features",
    "parse_snips_file",
    "resolve_snips_dir",
    "stratified_partition",
]
