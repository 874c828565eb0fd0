"""Text encoders: a Hugging Face (BERT family) or sentence-transformers directory → ``text.onnx`` + ``tokenizer.json``.

The graph takes ``input_ids``, ``attention_mask`` (and ``token_type_ids`` when the model has
token types) ``[batch, sequence]`` and gives ``sentence_embedding [batch, hidden]``: the
transformer's last hidden states pooled as the directory declares (sentence-transformers'
``modules.json`` → ``1_Pooling/config.json``: cls, mean, max, mean_sqrt_len; a ``Normalize``
module → L2-normalised), mean over the attention mask when it declares nothing.
``tokenizer.json`` is copied byte for byte; the runtime tokenizes with it.
"""

from __future__ import annotations

import functools
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fusionstream.engines.importers import hf
from fusionstream.engines.importers.common import (
    GRAPH_FILES,
    TRACE_BATCH,
    Imported,
    ImportSourceError,
    Job,
    Step,
    Window,
    check_error,
    describe_inputs,
    export_onnx,
    metadata,
    relative_error,
    session,
)  # fmt: skip

if TYPE_CHECKING:
    import numpy as np
    import torch
    from torch import nn

TOKENIZER = "tokenizer.json"
OUTPUT = "sentence_embedding"
DEFAULT_MAX_TOKENS = 128
#: sentence-transformers' pooling flags, in the order it concatenates the pooled vectors.
_POOLING_FLAGS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len",
}
_UNSUPPORTED_FLAGS = {"pooling_mode_weightedmean_tokens": "weightedmean", "pooling_mode_lasttoken": "lasttoken"}
#: Parity sentences: short, long, unknown words, and one longer than any max_tokens (truncated).
SENTENCES = (
    "seven",
    "Hello, world.",
    "The quick brown fox jumps over the lazy dog.",
    "one two three four five six seven eight nine zero",
    " ".join(["a transcript that goes on and on"] * 80),
)


@dataclass(frozen=True)
class TextSource:
    """A checked text encoder directory: where the model and the tokenizer are, and how to pool."""

    path: Path
    model_dir: Path
    tokenizer: Path
    config: dict[str, Any]
    modes: tuple[str, ...]
    normalize: bool
    max_tokens: int

    @property
    def pooling(self) -> str:
        return " + ".join(self.modes) + (", normalized" if self.normalize else "")


def plan(path: Path, max_tokens: int | None = None, option: str = "--text") -> Job:
    """Check ``path`` (a Hugging Face or sentence-transformers directory) and return the job importing it."""
    source = inspect_source(Path(path), max_tokens, option)
    return Job(f"text from {path}", ("text",), functools.partial(_run, source))


def inspect_source(path: Path, max_tokens: int | None, option: str) -> TextSource:
    """Read the directory's pooling, tokenizer and limits without loading the model."""
    model_dir, modes, normalize, declared = path, ("mean",), False, None
    modules_file = path / "modules.json"
    if modules_file.is_file():
        model_dir, modes, normalize, declared = _sentence_transformers(path, modules_file)
    config = hf.check_dir(model_dir, option)
    _not_a_speech_or_image_model(model_dir, config, option)
    if config.get("is_encoder_decoder"):
        # Its forward wants decoder inputs too: the exporter's own error said nothing about why.
        raise ImportSourceError(
            f"{model_dir / hf.CONFIG}: model_type {config['model_type']!r} is an encoder-decoder model; "
            f"{option} takes an encoder-only model (BERT-like, sentence-transformers; transformers' AutoModel of an "
            "encoder-decoder one wants decoder inputs too)"
        )
    tokenizer = next((d / TOKENIZER for d in (model_dir, path) if (d / TOKENIZER).is_file()), None)
    if tokenizer is None:
        raise ImportSourceError(
            f"{model_dir / TOKENIZER}: missing: a text encoder needs its fast tokenizer's tokenizer.json "
            "(AutoTokenizer.from_pretrained(...).save_pretrained(dir) writes it)"
        )
    limit = max_tokens or declared or DEFAULT_MAX_TOKENS
    positions = config.get("max_position_embeddings")
    if limit < 3:  # the special tokens and one more (2 would be traced as the batch size)
        raise ImportSourceError(f"max_tokens {limit}: at least 3")
    if isinstance(positions, int) and limit > positions:
        raise ImportSourceError(
            f"{model_dir / hf.CONFIG}: max_position_embeddings: {positions}, fewer than the {limit} tokens asked for"
        )
    return TextSource(path, model_dir, tokenizer, config, modes, normalize, limit)


def _not_a_speech_or_image_model(model_dir: Path, config: dict, option: str) -> None:
    """Refuse an audio or image model's folder by what it is, not by a tokenizer check it fails later."""
    import json

    try:
        processor = json.loads((model_dir / "preprocessor_config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return
    if not isinstance(processor, dict):
        return
    kind = config.get("model_type", "?")
    if "sampling_rate" in processor or "feature_extractor_type" in processor:
        raise ImportSourceError(f"{model_dir}: model_type {kind!r} takes audio (its preprocessor_config.json has a "
                                f"sampling rate): give it to --audio, not {option}")
    if "image_processor_type" in processor or "image_mean" in processor:
        raise ImportSourceError(f"{model_dir}: model_type {kind!r} takes images (its preprocessor_config.json is an "
                                f"image processor's): import image models with --video, not {option}")


def _sentence_transformers(path: Path, modules_file: Path) -> tuple[Path, tuple[str, ...], bool, int | None]:
    """``modules.json``: the transformer's folder, the pooling modes, Normalize, and max_seq_length."""
    import json

    try:
        modules = json.loads(modules_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ImportSourceError(f"{modules_file}: cannot read it: {exc}") from None
    if not isinstance(modules, list) or not all(isinstance(m, dict) for m in modules):
        raise ImportSourceError(f"{modules_file}: expected a list of modules")
    model_dir, modes, normalize, declared = path, ("mean",), False, None
    for module in modules:
        kind = str(module.get("type", "")).rsplit(".", 1)[-1]
        folder = path / str(module.get("path", ""))
        if kind == "Transformer":
            model_dir = folder
            for where in (folder, path):
                if (where / "sentence_bert_config.json").is_file():
                    value = hf.read_json(where / "sentence_bert_config.json").get("max_seq_length")
                    declared = value if isinstance(value, int) and value > 0 else None
                    break
        elif kind == "Pooling":
            modes = _pooling_modes(folder / "config.json")
        elif kind == "Normalize":
            normalize = True
        else:
            raise ImportSourceError(
                f"{modules_file}: module {module.get('path', '?')!r} ({module.get('type')}) is not supported: "
                "a text encoder imports Transformer, Pooling and Normalize modules"
            )
    return model_dir, modes, normalize, declared


def _pooling_modes(config_file: Path) -> tuple[str, ...]:
    config = hf.read_json(config_file)
    named = config.get("pooling_mode")
    if isinstance(named, str):  # the constructor's shorthand: cls, max, mean, mean_sqrt_len_tokens, ...
        short = named.removesuffix("_tokens")
        config = {**config, **{flag: mode == short for flag, mode in _POOLING_FLAGS.items()},
                  **{flag: mode == short for flag, mode in _UNSUPPORTED_FLAGS.items()}}
    for flag in _UNSUPPORTED_FLAGS:
        if config.get(flag):
            raise ImportSourceError(f"{config_file}: {flag}: not supported (cls, mean, max and mean_sqrt_len are)")
    modes = tuple(mode for flag, mode in _POOLING_FLAGS.items() if config.get(flag))
    if not modes:
        raise ImportSourceError(f"{config_file}: no pooling_mode_* is true")
    return modes


def pool(hidden: torch.Tensor, mask: torch.Tensor, modes: tuple[str, ...], normalize: bool) -> torch.Tensor:
    """Pool ``[B, T, H]`` hidden states over the tokens ``mask`` marks, as sentence-transformers does."""
    import torch

    weights = mask.unsqueeze(-1).to(hidden.dtype)
    parts = []
    for mode in modes:
        if mode == "cls":
            parts.append(hidden[:, 0])
        elif mode == "max":
            parts.append(hidden.masked_fill(weights == 0, -1e9).amax(dim=1))
        else:
            count = weights.sum(dim=1).clamp(min=1e-9)
            parts.append((hidden * weights).sum(dim=1) / (count if mode == "mean" else count.sqrt()))
    pooled = parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)
    return torch.nn.functional.normalize(pooled, p=2.0, dim=1) if normalize else pooled


def pooled_encoder(model: nn.Module, modes: tuple[str, ...], normalize: bool) -> nn.Module:
    """``model`` (a transformers encoder) with the pooling on top: token ids → one vector per text."""
    from torch import nn

    class PooledText(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
            extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
            hidden = self.model(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state
            return pool(hidden, attention_mask, modes, normalize)

    return PooledText().eval()


def _encode(
    tokenizer_file: Path, texts: tuple[str, ...], max_tokens: int, pad_id: int, names: list[str]
) -> dict[str, np.ndarray]:
    """``texts`` tokenized with ``tokenizer.json``, truncated to ``max_tokens``, padded to the longest."""
    import numpy as np
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_file))
    tokenizer.enable_truncation(max_tokens)
    # Always to the batch's longest, as serving pads (engines/preprocess.py): a tokenizer.json may carry
    # a fixed padding length (all-MiniLM-L6-v2's pads to 128) shorter than max_tokens, which leaves
    # longer rows unpadded and the batch ragged.
    configured = tokenizer.padding or {}
    pad_id = configured.get("pad_id", pad_id)
    tokenizer.enable_padding(pad_id=pad_id, pad_token=configured.get("pad_token") or tokenizer.id_to_token(pad_id)
                             or "[PAD]")
    encodings = tokenizer.encode_batch(list(texts))
    arrays = {"input_ids": [e.ids for e in encodings], "attention_mask": [e.attention_mask for e in encodings],
              "token_type_ids": [e.type_ids for e in encodings]}
    return {name: np.asarray(arrays[name], dtype=np.int64) for name in names}


def _run(source: TextSource, staging: Path, window: Window, step: Step) -> list[Imported]:
    import torch
    from tokenizers import Tokenizer

    del window  # text does not depend on it
    try:
        vocab = Tokenizer.from_file(str(source.tokenizer)).get_vocab_size(with_added_tokens=True)
    except Exception as exc:
        raise ImportSourceError(f"{source.tokenizer}: the tokenizers library cannot read it: {exc}") from None
    size = source.config.get("vocab_size")
    if isinstance(size, int) and vocab > size:
        raise ImportSourceError(f"{source.tokenizer}: {vocab} tokens, more than config.json's vocab_size {size}")
    step("loading the model")
    model = hf.load_model(source.model_dir)
    names = ["input_ids", "attention_mask"]
    if hf.accepts(model, "token_type_ids") and int(source.config.get("type_vocab_size") or 0) > 1:
        names.append("token_type_ids")
    encoder = pooled_encoder(model, source.modes, source.normalize)
    tokenizer = staging / TOKENIZER
    shutil.copyfile(source.tokenizer, tokenizer)
    pad = source.config.get("pad_token_id")
    pad_id = pad if isinstance(pad, int) else 0
    batches = [_encode(tokenizer, SENTENCES, source.max_tokens, pad_id, names)]
    batches += [_encode(tokenizer, (text,), source.max_tokens, pad_id, names) for text in SENTENCES[:2]]
    example = _encode(tokenizer, SENTENCES[2:2 + TRACE_BATCH], source.max_tokens, pad_id, names)
    step("exporting to ONNX")
    graph = staging / GRAPH_FILES["text"]
    export_onnx(encoder, tuple(torch.from_numpy(example[n]) for n in names), graph, input_names=names,
                output_name=OUTPUT, axes=[{0: "batch", 1: "sequence"}] * len(names),
                max_sizes={"sequence": source.max_tokens}, metadata=metadata("text", str(source.path)))
    step("checking parity")
    runner = session(graph)
    error, width = 0.0, 0
    with torch.no_grad():
        for feeds in batches:
            try:
                ref = encoder(*(torch.from_numpy(feeds[n]) for n in names)).numpy()
            except Exception as exc:
                raise ImportSourceError(f"{source.model_dir}: the model fails on {feeds['input_ids'].shape[1]} "
                                        f"tokens: {type(exc).__name__}: {exc}") from None
            error = max(error, relative_error(runner.run([OUTPUT], feeds)[0], ref))
            width = ref.shape[1]
    check_error(error, str(graph.name))
    entry = {
        "encoder": {
            "file": graph.name,
            "inputs": {name: {"name": name, "dtype": "int64"} for name in names},
            "output": {"name": OUTPUT, "size": int(width)},
        },
        "preprocess": {"tokenizer": TOKENIZER, "max_tokens": source.max_tokens},
    }
    return [Imported("text", str(source.path), entry, (graph.name, TOKENIZER), error, describe_inputs(graph),
                     f"pooling: {source.pooling}")]
