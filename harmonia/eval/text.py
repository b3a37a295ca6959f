"""BERT-uncased WordPiece tokenisation for Clotho's text branch, from a local `vocab.txt`.

X-ARES trains a text embedding table from scratch over the `bert-base-uncased` tokenizer's ids
(specs/xares.md §3.1); only the vocabulary file is needed, never the BERT weights. This is the
standard BERT basic tokenizer (lowercase, strip accents, split on whitespace and punctuation) then
greedy longest-match WordPiece, with [CLS] ... [SEP] around each caption.
"""

from __future__ import annotations

import os
import unicodedata
from pathlib import Path

from harmonia.eval.tasks import EvalDataError

VOCAB_ENV = "HARMONIA_BERT_VOCAB"


class VocabMissingError(EvalDataError, FileNotFoundError):
    """The bert-base-uncased vocabulary is not available offline."""


def find_bert_vocab(data_root: str | os.PathLike | None = None) -> Path:
    """Look for bert-base-uncased's vocab.txt: $HARMONIA_BERT_VOCAB, <data_root>/clotho/vocab.txt,
    <data_root>/bert-base-uncased/vocab.txt, then the Hugging Face cache."""
    candidates = []
    if os.environ.get(VOCAB_ENV):
        candidates.append(Path(os.environ[VOCAB_ENV]))
    if data_root is not None:
        candidates += [Path(data_root) / "clotho" / "vocab.txt", Path(data_root) / "bert-base-uncased" / "vocab.txt"]
    hf = Path(os.environ.get("HF_HUB_CACHE") or Path(os.environ.get("HF_HOME", Path.home() / ".cache/huggingface")) / "hub")
    for repo in ("models--bert-base-uncased", "models--google-bert--bert-base-uncased"):
        candidates += sorted((hf / repo / "snapshots").glob("*/vocab.txt"))
    for c in candidates:
        if c.is_file():
            return c
    raise VocabMissingError(
        "Clotho needs the bert-base-uncased vocabulary (vocab.txt, 30522 lines) and none was found offline "
        f"(looked at ${VOCAB_ENV}, <data-root>/clotho/vocab.txt, <data-root>/bert-base-uncased/vocab.txt and "
        "the Hugging Face cache). Download it once from https://huggingface.co/bert-base-uncased/blob/main/vocab.txt "
        f"and point ${VOCAB_ENV} at it; the task is skipped until then.")


class WordPieceTokenizer:
    def __init__(self, vocab_file: str | os.PathLike):
        tokens = Path(vocab_file).read_text(encoding="utf-8").splitlines()
        self.vocab = {t: i for i, t in enumerate(tokens)}
        for special in ("[PAD]", "[UNK]", "[CLS]", "[SEP]"):
            if special not in self.vocab:
                raise ValueError(f"{vocab_file}: not a BERT vocabulary (no {special} token)")
        self.pad_id, self.unk_id = self.vocab["[PAD]"], self.vocab["[UNK]"]
        self.cls_id, self.sep_id = self.vocab["[CLS]"], self.vocab["[SEP]"]

    def __len__(self) -> int:
        return len(self.vocab)

    def encode(self, text: str) -> list[int]:
        ids = [self.cls_id]
        for word in _basic_tokens(text):
            ids += self._wordpiece(word)
        return ids + [self.sep_id]

    def _wordpiece(self, word: str, max_chars: int = 100) -> list[int]:
        if len(word) > max_chars:
            return [self.unk_id]
        out, start = [], 0
        while start < len(word):
            end, piece = len(word), None
            while start < end:
                sub = word[start:end] if start == 0 else "##" + word[start:end]
                if sub in self.vocab:
                    piece = self.vocab[sub]
                    break
                end -= 1
            if piece is None:
                return [self.unk_id]
            out.append(piece)
            start = end
        return out


def _is_punct(ch: str) -> bool:
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


def _basic_tokens(text: str) -> list[str]:
    text = unicodedata.normalize("NFD", text.lower())
    text = "".join(c for c in text if unicodedata.category(c) != "Mn")
    out: list[str] = []
    for word in text.split():
        cur = ""
        for ch in word:
            if _is_punct(ch):
                if cur:
                    out.append(cur)
                out.append(ch)
                cur = ""
            else:
                cur += ch
        if cur:
            out.append(cur)
    return out
