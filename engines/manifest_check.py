"""Checking a model directory against its manifest (``fusionstream model check``).

Opens every graph with ONNX Runtime on the CPU, checks that each declared input and output exists
with the declared dtype and a shape the preprocessing can fill, runs one dummy window (batch 1
and 2) through every encoder and the fusion head, and times it. Every error names the manifest
field and the graph file, so a bad model is refused at load, not at the first window.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from fusionstream.engines.errors import ModelDirError, first_line
from fusionstream.engines.manifest import (
    Manifest,
    ModalitySpec,
    TextPreprocess,
    load_manifest,
)
from fusionstream.engines.preprocess import tokenizer_problem

#: ONNX Runtime's type strings for the dtypes a manifest may declare.
_ORT_TYPES = {"float32": "tensor(float)", "float16": "tensor(float16)", "int64": "tensor(int64)",
              "int32": "tensor(int32)"}
SAMPLE_TEXT = "one two three four five"
log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class GraphReport:
    """What the check saw of one graph."""

    graph: str
    file: str
    inputs: tuple[str, ...]
    output: str
    output_size: int
    cpu_ms: float
    #: What the graph does that is allowed but is likely a mistake (``model check`` prints them).
    warnings: tuple[str, ...] = ()


def check_model_dir(
    model_dir: Any, *, threads: int = 1, int8: bool | None = None, log_warnings: bool = True,
) -> tuple[Manifest, list[GraphReport]]:
    """Load and check ``model_dir``; returns its manifest and a report per graph, or raises
    :class:`ModelDirError` naming the field and the file. Each report's warnings are logged too
    unless ``log_warnings`` is off (``model check`` prints them itself).

    ``int8``: ``None`` checks every encoder's ``file`` and its ``int8_file`` (``model check``);
    ``False`` the fp32 graphs only, ``True`` the int8 graph of each encoder that has one (a runtime
    checks what it will run)."""
    manifest = load_manifest(model_dir)
    reports = []
    for modality in manifest.modalities.values():
        int8_file = modality.encoder.int8_file
        if int8 is not True or int8_file is None:
            reports.append(_check_encoder(manifest, modality, threads))
        if int8 is not False and int8_file is not None:
            quantized = replace(modality, encoder=replace(modality.encoder, file=int8_file))
            reports.append(_check_encoder(manifest, quantized, threads, field="int8_file"))
    if manifest.fusion is not None:
        reports.append(_check_fusion(manifest, threads))
    for warning in (w for r in reports for w in r.warnings) if log_warnings else ():
        log.warning("%s", warning)
    return manifest, reports


def _session(manifest: Manifest, file: str, field: str, threads: int) -> Any:
    import onnxruntime as ort  # lazy: `import fusionstream.engines` stays light

    path = manifest.directory / file
    if not path.is_file():
        raise ModelDirError(f"{manifest.path}: {field}: {path} does not exist")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    # FATAL only: a graph failing on a check's input is reported as one line naming the field, and ONNX
    # Runtime's own ERROR line (coloured, on stderr) would come before it.
    options.log_severity_level = 4
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own, unexported exception types
        raise ModelDirError(f"{manifest.path}: {field}: {file} is not a loadable ONNX graph: {exc}") from None


def _fail(manifest: Manifest, field: str, message: str) -> ModelDirError:
    return ModelDirError(f"{manifest.path}: {field}: {message}")


def _check_inputs(manifest: Manifest, modality: ModalitySpec, session: Any) -> None:
    base = f"modalities.{modality.name}.encoder"
    graph_inputs = {i.name: i for i in session.get_inputs()}
    declared = {spec.name: role for role, spec in modality.encoder.inputs.items()}
    for role, spec in modality.encoder.inputs.items():
        field = f"{base}.inputs.{role}"
        found = graph_inputs.get(spec.name)
        if found is None:
            raise _fail(manifest, f"{field}.name", f"{modality.encoder.file} has no input {spec.name!r} "
                        f"(it has {', '.join(graph_inputs)})")
        if found.type != _ORT_TYPES[spec.dtype]:
            raise _fail(manifest, f"{field}.dtype",
                        f"{spec.dtype} declared, {modality.encoder.file} takes {found.type}")
        expected = modality.row_shape
        shape = tuple(found.shape)
        if not shape:
            raise _fail(manifest, field, f"{modality.encoder.file} input {spec.name!r} declares no shape (its rank is "
                        "unknown): export the graph with its inputs' shapes, [batch, ...] with a dynamic batch axis")
        if len(shape) != len(expected) + 1:
            per_row = ", ".join("any" if d is None else str(d) for d in expected)
            raise _fail(manifest, field, f"{modality.encoder.file} input {spec.name!r} has shape {list(shape)}, "
                        f"the preprocessing gives [batch, {per_row}]")
        for got, want in zip(shape[1:], expected, strict=True):
            if isinstance(got, int) and want is not None and got != want:
                raise _fail(manifest, f"modalities.{modality.name}.preprocess",
                            f"makes {list(expected)} per row, {modality.encoder.file} input {spec.name!r} "
                            f"expects {list(shape[1:])}")
    # after the declared names: a misspelt name reads better as missing than as unfed
    for name in graph_inputs:
        if name not in declared:
            raise _fail(manifest, f"{base}.inputs", f"{modality.encoder.file} has an input {name!r} no role feeds "
                        f"(declared: {', '.join(declared) or 'none'})")


def dummy_inputs(modality: ModalitySpec, batch: int, tokenizer: Any = None) -> dict[str, np.ndarray]:
    """A harmless feed of ``batch`` rows for the modality's encoder: zeros (a text encoder without its
    tokenizer: token id 0, unmasked nothing), or the tokenizer's ids of a sample sentence."""
    pre = modality.preprocess
    arrays: dict[str, np.ndarray] = {}
    if isinstance(pre, TextPreprocess) and tokenizer is not None:
        encoding = tokenizer.encode(SAMPLE_TEXT)
        ids = encoding.ids[: pre.max_tokens]
        fields = {"input_ids": ids, "attention_mask": [1] * len(ids), "token_type_ids": [0] * len(ids)}
        for role, spec in modality.encoder.inputs.items():
            arrays[spec.name] = np.array([fields[role]] * batch, dtype=spec.dtype)
        return arrays
    for spec in modality.encoder.inputs.values():
        shape = tuple(d if d is not None else 8 for d in modality.row_shape)
        arrays[spec.name] = np.zeros((batch, *shape), dtype=spec.dtype)
    return arrays


def _tokenizer(manifest: Manifest, modality: ModalitySpec) -> Any:
    """The text modality's tokenizer, or the one-line refusal of its file."""
    from tokenizers import Tokenizer

    pre = modality.preprocess
    assert isinstance(pre, TextPreprocess) and pre.tokenizer is not None
    try:
        return Tokenizer.from_file(str(manifest.directory / pre.tokenizer))
    except Exception as exc:  # the tokenizers library raises a bare Exception on a bad file
        raise _fail(manifest, f"modalities.{modality.name}.preprocess.tokenizer",
                    f"{pre.tokenizer} {tokenizer_problem(manifest.directory / pre.tokenizer, exc)}") from None


def _check_output(manifest: Manifest, session: Any, output: str, field: str, file: str) -> None:
    outputs = [o.name for o in session.get_outputs()]
    if output not in outputs:
        raise _fail(manifest, field, f"{file} has no output {output!r} (it has {', '.join(outputs)})")


def _run(manifest: Manifest, session: Any, feed: dict[str, np.ndarray], output: str, field: str,
         file: str) -> tuple[np.ndarray, float]:
    _check_output(manifest, session, output, field, file)
    started = time.process_time()
    try:
        (result,) = session.run([output], feed)
    except Exception as exc:  # a graph that loads but cannot run on what the manifest says it takes
        raise _fail(manifest, field, f"{file} fails on a dummy window: {exc}") from None
    return np.asarray(result), (time.process_time() - started) * 1000


def _check_encoder(manifest: Manifest, modality: ModalitySpec, threads: int, field: str = "file") -> GraphReport:
    if field == "file":
        return _checked_encoder(manifest, modality, threads, field)
    # The int8 graph is checked against the encoder's declaration: what does not fit is its int8_file's fault.
    base = f"modalities.{modality.name}.encoder"
    try:
        return _checked_encoder(manifest, modality, threads, field)
    except ModelDirError as exc:
        reason = str(exc).removeprefix(f"{manifest.path}: ")
        if reason.startswith(f"{base}.{field}:"):
            raise
        raise _fail(manifest, f"{base}.{field}", f"{modality.encoder.file} does not fit the encoder it quantizes "
                    f"({reason})") from None


def _checked_encoder(manifest: Manifest, modality: ModalitySpec, threads: int, field: str) -> GraphReport:
    encoder = modality.encoder
    base = f"modalities.{modality.name}.encoder"
    session = _session(manifest, encoder.file, f"{base}.{field}", threads)
    _check_inputs(manifest, modality, session)
    # before anything runs the graph: a wrong output name would read as whatever that run was testing
    _check_output(manifest, session, encoder.output, f"{base}.output.name", encoder.file)
    pre = modality.preprocess
    tokenizer = None
    if isinstance(pre, TextPreprocess) and pre.tokenizer is not None:
        tokenizer = _tokenizer(manifest, modality)  # a bad file named as such, before the graph runs what it gives
        specials = tokenizer.num_special_tokens_to_add(False)
        if pre.max_tokens <= specials:  # the tokenizer would ignore the truncation, or keep no word
            raise _fail(manifest, f"modalities.{modality.name}.preprocess.max_tokens",
                        f"{pre.max_tokens} leaves no room for words: {pre.tokenizer} adds {specials} special tokens "
                        f"to every text; set at least {specials + 1}")
        _check_token_range(manifest, modality, session, tokenizer)
    cpu_ms = 0.0
    for batch in (1, 2):
        result, cpu_ms = _run(manifest, session, dummy_inputs(modality, batch, tokenizer), encoder.output,
                              f"{base}.output.name", encoder.file)
        if result.shape != (batch, encoder.size):
            raise _fail(manifest, f"{base}.output.size", f"{encoder.size} declared, {encoder.file} gives "
                        f"{list(result.shape[1:])} per row (batch {batch}: {list(result.shape)})")
        if not np.isfinite(result).all():
            raise _fail(manifest, f"modalities.{modality.name}", f"{encoder.file} gives non-finite values (NaN or "
                        "infinity) on a dummy window: check the preprocessing (scale, mean, std) and the graph")
    graph = modality.name if field == "file" else f"{modality.name} (int8)"
    return GraphReport(graph, encoder.file, _described(session), encoder.output, encoder.size, cpu_ms)


def _check_token_range(manifest: Manifest, modality: ModalitySpec, session: Any, tokenizer: Any) -> None:
    """Run the largest id the tokenizer can give, and the longest input ``max_tokens`` allows, through the text
    encoder: a tokenizer larger than the encoder's embedding table, or more tokens than its position
    embeddings, would fail on the first caption that has them, in the middle of serving."""
    pre = modality.preprocess
    assert isinstance(pre, TextPreprocess) and pre.tokenizer is not None
    vocabulary = tokenizer.get_vocab_size(with_added_tokens=True)
    base = f"modalities.{modality.name}"
    sample = tokenizer.encode(SAMPLE_TEXT).ids[: pre.max_tokens] or [0]
    def fails(ids: list[int]) -> str | None:
        fields = {"input_ids": ids, "attention_mask": [1] * len(ids), "token_type_ids": [0] * len(ids)}
        feed = {spec.name: np.array([fields[role]], dtype=spec.dtype) for role, spec in modality.encoder.inputs.items()}
        try:
            (result,) = session.run([modality.encoder.output], feed)
        except Exception as exc:  # onnxruntime's own exception types
            return first_line(exc)
        return None if np.isfinite(np.asarray(result)).all() else "non-finite output"

    if problem := fails([*sample[:-1], vocabulary - 1]):
        raise _fail(manifest, f"{base}.preprocess.tokenizer",
                    f"{pre.tokenizer} has {vocabulary} tokens, and {modality.encoder.file} fails on the last one (id "
                    f"{vocabulary - 1}): its embedding table is smaller than the tokenizer ({problem})")
    longest = (sample * pre.max_tokens)[: pre.max_tokens]
    if fails(longest):
        # The most tokens it takes (its position embeddings, usually): said as the number to set.
        low, high = 0, len(longest)  # low works (or is 0), high fails
        while high - low > 1:
            middle = (low + high) // 2
            low, high = (low, middle) if fails(longest[:middle]) else (middle, high)
        takes = f"takes at most {low} tokens (its position embeddings?)" if low else "fails on any number of tokens"
        raise _fail(manifest, f"{base}.preprocess.max_tokens",
                    f"{pre.max_tokens}, but {modality.encoder.file} {takes}: set max_tokens to {low} or less"
                    if low else f"{modality.encoder.file} {takes}")


def _check_fusion(manifest: Manifest, threads: int) -> GraphReport:
    fusion, task = manifest.fusion, manifest.task
    assert fusion is not None and task is not None
    session = _session(manifest, fusion.file, "fusion.file", threads)
    graph_inputs = {i.name for i in session.get_inputs()}
    wanted = {**{f"fusion.inputs.{m}": name for m, name in fusion.inputs.items()}, "fusion.inputs.mask": fusion.mask}
    for field, name in wanted.items():
        if name not in graph_inputs:
            have = ", ".join(sorted(graph_inputs))
            raise _fail(manifest, field, f"{fusion.file} has no input {name!r} (it has {have})")
    if extra := graph_inputs - set(wanted.values()):
        raise _fail(manifest, "fusion.inputs",
                    f"{fusion.file} has inputs no modality feeds: {', '.join(sorted(extra))}")
    rng = np.random.default_rng(0)
    cpu_ms, warnings = 0.0, ()
    for batch in (1, 2):
        feed = {fusion.inputs[m]: rng.standard_normal((batch, spec.encoder.size)).astype(np.float32)
                for m, spec in manifest.modalities.items()}
        feed[fusion.mask] = np.ones((batch, len(manifest.modalities)), np.float32)
        result, cpu_ms = _run(manifest, session, feed, fusion.output, "fusion.output.name", fusion.file)
        if not np.isfinite(result).all():
            raise _fail(manifest, "fusion", f"{fusion.file} gives non-finite values (NaN or infinity) on a dummy "
                        "window")
        if result.shape != (batch, task.outputs):
            what = f"size {task.size}" if task.kind == "embedding" else f"{task.outputs} classes"
            raise _fail(manifest, "fusion.output", f"the task has {what}, {fusion.file} gives {list(result.shape)} "
                        f"for a batch of {batch}")
        warnings = _not_probabilities(manifest, result)
    return GraphReport("fusion", fusion.file, _described(session), fusion.output, task.outputs, cpu_ms, warnings)


def _not_probabilities(manifest: Manifest, scores: np.ndarray) -> tuple[str, ...]:
    """With ``activation: none`` the graph's output is published as the scores: a classifier's must
    be probabilities already. Whatever the embeddings, a graph that outputs them gives values in
    [0, 1] (summing to 1 for one label): anything else is logits published raw."""
    fusion, task = manifest.fusion, manifest.task
    assert fusion is not None and task is not None
    if fusion.activation != "none" or task.kind == "embedding":
        return ()
    sums = scores.sum(axis=1)
    in_range = bool(((scores >= -1e-6) & (scores <= 1 + 1e-6)).all())
    # 1e-2: a float16 head's probabilities over many classes do not sum to 1 closely; logits never come near.
    if task.kind == "single_label" and (not in_range or not np.allclose(sums, 1.0, atol=1e-2)):
        return (f"{manifest.directory / 'model.json'}: fusion.output.activation is none, but {fusion.file}'s scores "
                f"on a dummy window are not probabilities (they sum to {float(sums[0]):.3g}, range "
                f"{float(scores.min()):.3g} to {float(scores.max()):.3g}): predictions will publish them as they are; "
                "set \"activation\": \"softmax\" if the graph outputs logits",)
    if task.kind == "multi_label" and not in_range:
        return (f"{manifest.directory / 'model.json'}: fusion.output.activation is none, but {fusion.file}'s scores "
                f"on a dummy window lie outside [0, 1] ({float(scores.min()):.3g} to {float(scores.max()):.3g}): "
                "thresholds will be compared with them as they are; set \"activation\": \"sigmoid\" if the "
                "graph outputs logits",)
    return ()


def _described(session: Any) -> tuple[str, ...]:
    """``name:dtype[shape]`` of each graph input, as ``model check`` prints them."""
    return tuple(f"{i.name}:{i.type.removeprefix('tensor(').rstrip(')')}{i.shape}" for i in session.get_inputs())
