"""Tiny pretrained-looking models on disk, for the `model import` tests (nothing is downloaded).

- :func:`tiny_bert`: a 2-layer BERT with random weights and a WordPiece ``tokenizer.json`` trained
  here, saved as Hugging Face does (optionally as a sentence-transformers folder);
- :func:`tiny_wav2vec2`: a 2-layer wav2vec2 with a small convolution stack and its
  ``preprocessor_config.json``;
- :func:`resnet18`: a torchvision classifier with random weights (seeded), the factory the tests
  import as ``tests.importkit:resnet18``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

CORPUS = [
    "zero one two three four five six seven eight nine",
    "nine eight seven six five four three two one zero",
    "the quick brown fox jumps over the lazy dog",
    "hello world, this is a transcript of a camera with a microphone",
    "a person says seven and then three, a vehicle passes by",
]
#: Sentences of different lengths (with words the tokenizer never saw).
SENTENCES = ["seven", "one two three four", "the quick brown fox says hello to a zebra", "nine"]


def tiny_bert(path: Path, *, pooling: str | None = None, normalize: bool = False) -> Path:
    """A tiny BERT in ``path``; with ``pooling`` (cls, mean, max) also sentence-transformers' modules."""
    import torch
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertModel

    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    trainer = trainers.WordPieceTrainer(vocab_size=120, special_tokens=special, show_progress=False)
    tokenizer.train_from_iterator(CORPUS, trainer)
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    tokenizer.decoder = decoders.WordPiece()
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tokenizer.get_vocab_size(), hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, pad_token_id=0)
    path.mkdir(parents=True, exist_ok=True)
    BertModel(config).eval().save_pretrained(path)
    tokenizer.save(str(path / "tokenizer.json"))
    if pooling is not None:
        modules = [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        ]
        if normalize:
            kind = "sentence_transformers.models.Normalize"
            modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": kind})
            (path / "2_Normalize").mkdir()
        (path / "modules.json").write_text(json.dumps(modules))
        (path / "1_Pooling").mkdir()
        flags = {"cls": "pooling_mode_cls_token", "mean": "pooling_mode_mean_tokens", "max": "pooling_mode_max_tokens"}
        (path / "1_Pooling" / "config.json").write_text(json.dumps({
            "word_embedding_dimension": 32, **{flag: name == pooling for name, flag in flags.items()},
            "pooling_mode_mean_sqrt_len_tokens": False, "pooling_mode_weightedmean_tokens": False,
            "pooling_mode_lasttoken": False, "include_prompt": True,
        }))  # fmt: skip
        (path / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 48, "do_lower_case": False}))
    return path


def bert_reference(source: Path, sentences: list[str], *, pooling: str = "mean", normalize: bool = False,
                   max_tokens: int = 128) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Tokenized ``sentences`` and their pooled embeddings, computed with transformers directly."""
    import torch
    from tokenizers import Tokenizer
    from transformers import AutoModel

    tokenizer = Tokenizer.from_file(str(source / "tokenizer.json"))
    tokenizer.enable_truncation(max_tokens)
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
    encodings = tokenizer.encode_batch(sentences)
    feeds = {
        "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
        "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
        "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
    }
    model = AutoModel.from_pretrained(source, local_files_only=True).eval()
    with torch.no_grad():
        hidden = model(**{k: torch.from_numpy(v) for k, v in feeds.items()}).last_hidden_state
        mask = torch.from_numpy(feeds["attention_mask"]).unsqueeze(-1).float()
        pooled = hidden[:, 0] if pooling == "cls" else (hidden * mask).sum(1) / mask.sum(1)
        if normalize:
            pooled = torch.nn.functional.normalize(pooled, dim=1)
    return feeds, pooled.numpy()


def tiny_wav2vec2(path: Path, *, rate: int = 16_000, normalize: bool = True, hidden: int = 32) -> Path:
    """A tiny wav2vec2 in ``path`` with its feature extractor's config. From ``hidden`` 64 on, the exporter
    computes the weight-normalised positional convolution's weight in the graph (as for real wav2vec2s)."""
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    torch.manual_seed(0)
    config = Wav2Vec2Config(
        hidden_size=hidden, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, conv_dim=(16, 16),
        conv_stride=(5, 2), conv_kernel=(10, 3), num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2,
        vocab_size=10,
    )  # fmt: skip
    path.mkdir(parents=True, exist_ok=True)
    Wav2Vec2Model(config).eval().save_pretrained(path)
    (path / "preprocessor_config.json").write_text(json.dumps({
        "feature_extractor_type": "Wav2Vec2FeatureExtractor", "feature_size": 1, "sampling_rate": rate,
        "padding_value": 0.0, "do_normalize": normalize, "return_attention_mask": False,
    }))  # fmt: skip
    return path


def resnet18() -> Any:
    """A torchvision ResNet-18 classifier with seeded random weights (``weights=None``: nothing is downloaded)."""
    import torch
    import torchvision

    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None).eval()


def not_a_module() -> str:
    """A factory that returns something else."""
    return "resnet"
