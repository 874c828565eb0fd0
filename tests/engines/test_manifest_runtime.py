"""A format-2 model directory through the runtime interface: the declared preprocessing, the encoders
and the fusion head with its activation, and what is refused at load (docs/model-format.md)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fusionstream.engines.backends import RuntimeChoices, backend_class, open_runtime
from fusionstream.engines.backends.base import sigmoid, softmax
from fusionstream.engines.errors import EngineError, InputError, ModelDirError
from fusionstream.engines.features import text_to_ids
from fusionstream.engines.manifest import (
    AudioPreprocess,
    EncoderSpec,
    HashedNgrams,
    Manifest,
    ModalitySpec,
    TensorSpec,
    TextPreprocess,
    VideoPreprocess,
    load_manifest,
)
from fusionstream.engines.preprocess import AudioPreparer, Preprocessor, TextPreparer, VideoPreparer
from fusionstream.engines.spec import ModelSpec
from tests.onnxgraphs import VOCAB, edit_manifest, fused, text_embedding, write_model

# -- preprocessing --------------------------------------------------------------------------------


def _frame(height: int, width: int) -> np.ndarray:
    """Left third red, middle third green, right third blue."""
    frame = np.zeros((height, width, 3), np.uint8)
    third = width // 3
    frame[:, :third, 0] = 255
    frame[:, third : 2 * third, 1] = 255
    frame[:, 2 * third :, 2] = 255
    return frame


def test_stretch_crop_and_letterbox_resize_as_declared() -> None:
    frame = _frame(60, 180)  # 1:3, into a square
    stretch = VideoPreparer(VideoPreprocess(frames=1, height=30, width=30, scale=1.0), "float32").frame(frame)
    crop = VideoPreparer(VideoPreprocess(frames=1, height=30, width=30, resize="center_crop", scale=1.0),
                         "float32").frame(frame)
    box = VideoPreparer(VideoPreprocess(frames=1, height=30, width=30, resize="letterbox", scale=1.0),
                        "float32").frame(frame)
    assert stretch.shape == crop.shape == box.shape == (3, 30, 30)
    # stretch keeps all three thirds side by side; a centre crop of a 1:3 frame is its middle (green) third
    assert stretch[0, :, 2].min() == 255 and stretch[2, :, -3].min() == 255
    assert crop[1].min() == 255 and crop[0].max() == 0 and crop[2].max() == 0
    # letterbox: the frame fits the width (30 x 10), centred, zero rows above and below
    assert box[:, :10].max() == 0 and box[:, 20:].max() == 0
    assert box[0, 10:20, 2].min() == 255 and box[2, 10:20, -3].min() == 255


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("colour", ["rgb", "bgr"])
def test_pixels_are_scaled_normalised_in_the_declared_colour_order_layout_and_dtype(layout: str, colour: str) -> None:
    frame = np.empty((4, 4, 3), np.uint8)
    frame[...] = (200, 100, 50)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    pre = VideoPreprocess(frames=1, height=4, width=4, colour=colour, mean=mean, std=std, layout=layout)
    out = VideoPreparer(pre, "float16").frame(frame)
    assert out.dtype == np.float16 and out.shape == ((3, 4, 4) if layout == "nchw" else (4, 4, 3))
    channels = out[:, 0, 0] if layout == "nchw" else out[0, 0, :]
    rgb = [(v / 255 - m) / s for v, m, s in zip((200, 100, 50), mean, std, strict=True)]
    np.testing.assert_allclose(channels.astype(np.float32), rgb if colour == "rgb" else rgb[::-1], rtol=2e-3)


def test_a_whole_window_graph_gets_the_declared_frames_sampled_evenly() -> None:
    prepare = VideoPreparer(VideoPreprocess(frames=4, height=2, width=2, scale=1.0), "float32")
    frames = [np.full((2, 2, 3), v, np.uint8) for v in (10, 20)]
    out = prepare.window(frames)
    assert out.shape == (4, 3, 2, 2)
    assert [int(out[i, 0, 0, 0]) for i in range(4)] == [10, 10, 20, 20]  # repeated when fewer
    with pytest.raises(InputError):
        prepare.window([])


def test_audio_is_normalised_per_window_only_when_declared() -> None:
    wave = np.stack([np.linspace(-0.2, 0.6, 100, dtype=np.float32), np.full(100, 0.3, np.float32)])
    raw = AudioPreparer(AudioPreprocess(100, 100), "float32")(wave)
    np.testing.assert_array_equal(raw, wave)
    normal = AudioPreparer(AudioPreprocess(100, 100, normalize=True), "float16")(wave)
    assert normal.dtype == np.float16
    assert abs(float(normal[0].astype(np.float32).mean())) < 1e-3 and abs(normal[0].astype(np.float32).std() - 1) < 1e-2
    assert np.isfinite(normal[1]).all() and np.abs(normal[1]).max() < 1e-2  # a constant window: ~0, not NaN
    with pytest.raises(InputError):
        AudioPreparer(AudioPreprocess(100, 100), "float32")(wave[:, :50])


def _text_manifest(directory: Path, inputs: dict[str, str], dtype: str = "int64", max_tokens: int = 4) -> Manifest:
    from tests.onnxgraphs import write_tokenizer

    write_tokenizer(directory / "tokenizer.json")
    encoder = EncoderSpec("text.onnx", {role: TensorSpec(name, dtype) for role, name in inputs.items()}, "e", 4)
    text = ModalitySpec("text", encoder, TextPreprocess(tokenizer="tokenizer.json", max_tokens=max_tokens))
    return Manifest("t", 10**9, 5 * 10**8, {"text": text}, None, None, directory)


def test_a_tokenizer_truncates_pads_to_the_batch_longest_and_feeds_the_declared_inputs(tmp_path: Path) -> None:
    manifest = _text_manifest(tmp_path, {"input_ids": "ids", "attention_mask": "am", "token_type_ids": "tt"},
                              dtype="int32")
    feed = TextPreparer(manifest.modalities["text"], manifest)(["One two", "three four five six seven", "nine"])
    assert set(feed) == {"ids", "am", "tt"} and all(a.dtype == np.int32 for a in feed.values())
    index = {w: i for i, w in enumerate(VOCAB)}
    assert feed["ids"].tolist() == [[index["one"], index["two"], 0, 0],
                                     [index["three"], index["four"], index["five"], index["six"]],  # max_tokens 4
                                     [index["nine"], 0, 0, 0]]
    assert feed["am"].tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]
    assert not feed["tt"].any()
    short = TextPreparer(manifest.modalities["text"], manifest)(["one", "two"])
    assert short["ids"].shape == (2, 1)  # padded to the longest in the batch, not to max_tokens


class _Recording:
    """The real tokenizer, noting how many characters each text it is given has."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer, self.lengths = tokenizer, []  # type: ignore[var-annotated]

    def encode_batch(self, texts: list[str]) -> Any:
        self.lengths += [len(text) for text in texts]
        return self.tokenizer.encode_batch(texts)


def test_a_caption_of_a_megabyte_is_cut_before_it_is_tokenized_with_the_same_ids(tmp_path: Path) -> None:
    """The tokenizers library reads all of a text before truncating it: 900 KB cost 2 s of engine time."""
    from fusionstream.engines.features import TEXT_CHARS_PER_TOKEN

    manifest = _text_manifest(tmp_path, {"input_ids": "ids", "attention_mask": "am"}, max_tokens=4)
    preparer = TextPreparer(manifest.modalities["text"], manifest)
    huge, short = "seven eight nine zero " * 50_000, "one two"
    whole = preparer([huge, short])
    preparer._tokenizer = recording = _Recording(preparer._tokenizer)
    cut = preparer([huge, short])
    assert recording.lengths == [4 * TEXT_CHARS_PER_TOKEN, len(short)]
    for name in ("ids", "am"):
        np.testing.assert_array_equal(cut[name], whole[name])


def test_hashed_ngrams_of_a_megabyte_caption_read_only_what_fills_the_ids() -> None:
    from fusionstream.engines.features import TEXT_CHARS_PER_TOKEN

    spec = ModelSpec(version="x", fusion="concat")
    words = "seven eight nine " * 100_000
    np.testing.assert_array_equal(text_to_ids(words, spec), text_to_ids(words[:10_000], spec))
    # The cut's one cost: words after that many characters of punctuation alone are not read.
    assert not text_to_ids("." * spec.text_max_len * TEXT_CHARS_PER_TOKEN + " seven", spec).any()
    assert text_to_ids("." * 100 + " seven", spec).any()


def test_a_tokenizer_file_that_is_not_one_is_refused_naming_the_field(tmp_path: Path) -> None:
    manifest = _text_manifest(tmp_path, {"input_ids": "ids"})
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(ModelDirError, match=r"modalities\.text\.preprocess\.tokenizer: tokenizer\.json is not a "
                                            r"Hugging Face tokenizer\.json \(not even JSON\)"):
        TextPreparer(manifest.modalities["text"], manifest)
    # Valid JSON that is no tokenizer: the library's own message read like a JSON syntax error.
    (tmp_path / "tokenizer.json").write_text('{"vocab": {"a": 0}}')
    with pytest.raises(ModelDirError, match=r"is JSON but not a Hugging Face tokenizer\.json \(it has no \"model\""):
        TextPreparer(manifest.modalities["text"], manifest)


def test_hashed_ngrams_are_format_1s_ids(tmp_path: Path) -> None:
    spec = ModelSpec(version="x", fusion="concat")
    hashed = HashedNgrams(spec.text_buckets, spec.text_ngrams, spec.text_max_len)
    encoder = EncoderSpec("text.onnx", {"ids": TensorSpec("text", "int64")}, "embedding", 64)
    manifest = Manifest("t", 10**9, 5 * 10**8,
                        {"text": ModalitySpec("text", encoder, TextPreprocess(hashed_ngrams=hashed))}, None, None,
                        tmp_path)
    feed = Preprocessor(manifest).text_feed(["seven eight", "nine"])
    np.testing.assert_array_equal(feed["text"], np.stack([text_to_ids("seven eight", spec), text_to_ids("nine", spec)]))


# -- the runtime ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("tiny") / "model"
    made = write_model(out, video={"frames": 2}, audio={}, text=True)
    return out, made


def test_the_runtime_encodes_each_modality_and_fuses_with_the_declared_activation(
    tiny: tuple[Path, dict[str, Any]]
) -> None:
    model_dir, made = tiny
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (16, 20, 3), dtype=np.uint8) for _ in range(3)]
    wave = rng.standard_normal((2, 100)).astype(np.float32)
    with open_runtime("onnxruntime", model_dir) as runtime:
        assert runtime.modalities == ("video", "audio", "text") and runtime.embeds_frames
        pre = runtime.preprocess
        assert pre is not None
        pixels = pre.video_frames(frames)
        video = runtime.encode_frames(pixels)
        audio = runtime.encode("audio", pre.audio_feed(wave))
        feed = pre.text_feed(["one two", "three"])
        text = runtime.encode("text", feed)
        np.testing.assert_allclose(video, pixels.reshape(3, -1) @ made["video"], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(audio, wave @ made["audio"], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(text, text_embedding(made["text"], feed["input_ids"], feed["attention_mask"]),
                                   rtol=1e-5, atol=1e-6)
        embeddings = {"video": video[:2], "audio": audio, "text": np.zeros((2, 4), np.float32)}
        mask = np.array([[1, 1, 0], [1, 0, 0]], np.float32)  # absent: zeros and mask 0
        embeddings["audio"][1] = 0
        probs = runtime.fuse(embeddings, mask)
        np.testing.assert_allclose(probs, softmax(fused(made["fusion"], embeddings, mask)), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(probs.sum(axis=1), 1, rtol=1e-6)
        with pytest.raises(InputError, match="mask must be float32"):
            runtime.fuse(embeddings, mask[:, :2])
        with pytest.raises(InputError, match="text embeddings must be float32"):
            runtime.fuse(embeddings | {"text": np.zeros((2, 5), np.float32)}, mask)


@pytest.mark.parametrize("activation", ["sigmoid", "none"])
def test_sigmoid_and_none_activations(tmp_path: Path, activation: str) -> None:
    made = write_model(tmp_path, audio={}, activation=activation,
                       task={"kind": "multi_label", "classes": ["x", "y"], "thresholds": 0.5})
    wave = np.random.default_rng(1).standard_normal((3, 100)).astype(np.float32)
    with open_runtime("onnxruntime", load_manifest(tmp_path)) as runtime:  # a loaded manifest works too
        assert runtime.modalities == ("audio",) and not runtime.embeds_frames and runtime.frame_side == 0
        assert runtime.preprocess is not None
        emb = runtime.encode("audio", runtime.preprocess.audio_feed(wave))
        out = runtime.fuse({"audio": emb}, np.ones((3, 1), np.float32))
        raw = fused(made["fusion"], {"audio": emb}, np.ones((3, 1), np.float32))
        np.testing.assert_allclose(out, sigmoid(raw) if activation == "sigmoid" else raw, rtol=1e-5, atol=1e-6)
        with pytest.raises(InputError, match="does not use video"):
            runtime.encode("video", {"pixel_values": np.zeros((1, 3, 8, 10), np.float32)})
        with pytest.raises(EngineError, match=r"whole windows|single frames"):
            runtime.encode_frames(np.zeros((1, 3, 8, 10), np.float32))


def test_a_whole_window_video_encoder_takes_the_declared_frames(tmp_path: Path) -> None:
    made = write_model(tmp_path, video={"frames": 3, "layout": "nhwc"}, per_frame=False)
    frames = [np.full((8, 10, 3), v, np.uint8) for v in (0, 100, 200)]
    with open_runtime("onnxruntime", tmp_path) as runtime:
        assert not runtime.embeds_frames and runtime.frame_side == 10
        assert runtime.preprocess is not None and runtime.preprocess.video is not None
        pixels = np.stack([runtime.preprocess.video.window(frames)])
        assert pixels.shape == (1, 3, 8, 10, 3)
        np.testing.assert_allclose(runtime.encode("video", runtime.preprocess.video_feed(pixels)),
                                   pixels.reshape(1, -1) @ made["video"], rtol=1e-5, atol=1e-5)


# -- refused at load ------------------------------------------------------------------------------


def _broken(tiny: tuple[Path, dict[str, Any]], tmp_path: Path, change: Any) -> Path:
    out = tmp_path / "broken"
    shutil.copytree(tiny[0], out)
    edit_manifest(out, change)
    return out


def _set(path: str, value: Any) -> Any:
    def change(doc: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        for key in parents:
            doc = doc[key]
        if value is None:
            del doc[last]
        else:
            doc[last] = value
    return change


CASES = {
    "embedding size": (_set("modalities.text.encoder.output.size", 7),
                       r"model\.json: modalities\.text\.encoder\.output\.size: 7 declared, text\.onnx gives \[4\]"),
    "input shape": (_set("modalities.video.preprocess.height", 16),
                    r"modalities\.video\.preprocess: makes \[3, 16, 10\] per row, video\.onnx input 'pixel_values' "
                    r"expects \[3, 8, 10\]"),
    "input name": (_set("modalities.audio.encoder.inputs.samples.name", "audio"),
                   r"modalities\.audio\.encoder\.inputs\.samples\.name: audio\.onnx has no input 'audio'"),
    "input dtype": (_set("modalities.audio.encoder.inputs.samples.dtype", "float16"),
                    r"modalities\.audio\.encoder\.inputs\.samples\.dtype: float16 declared, audio\.onnx takes"),
    "whole window": (_set("modalities.video.encoder.per_frame", False),
                     r"modalities\.video\.encoder\.inputs\.pixels: video\.onnx input 'pixel_values' has shape"),
    "output name": (_set("modalities.video.encoder.output.name", "features"),
                    r"modalities\.video\.encoder\.output\.name: video\.onnx has no output 'features'"),
    "classes": (_set("task.classes", ["a", "b"]), r"fusion\.output: the task has 2 classes, fusion\.onnx gives"),
    "missing tokenizer": (_set("modalities.text.preprocess.tokenizer", "absent.json"),
                          r"model\.json: modalities\.text\.preprocess\.tokenizer: .*absent\.json does not exist"),
    "fusion input": (_set("fusion.inputs.video", "emb_v"), r"fusion\.inputs\.video: fusion\.onnx has no input 'emb_v'"),
    # A channel divided by 0, or NaN (JSON as Python reads it allows it): every prediction would be NaN.
    "std of 0": (_set("modalities.video.preprocess.std", [0, 1, 1]),
                 r"modalities\.video\.preprocess\.std: expected numbers above 0"),
    "NaN mean": (_set("modalities.video.preprocess.mean", [float("nan"), 0, 0]),
                 r"modalities\.video\.preprocess\.mean: expected finite numbers"),
    "encoders only": (lambda doc: (doc.pop("task"), doc.pop("fusion")),
                      r"encoders-only directory .* train a head on it first \(fusionstream train OUT --encoders "),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_bad_model_is_refused_at_load_naming_the_file_and_field(
    tiny: tuple[Path, dict[str, Any]], tmp_path: Path, case: str
) -> None:
    change, message = CASES[case]
    model_dir = _broken(tiny, tmp_path, change)
    with pytest.raises(ModelDirError, match=message):
        runtime = open_runtime("onnxruntime", model_dir)
        runtime.activate()


def test_options_precisions_and_lifecycle_of_a_format_2_runtime(tiny: tuple[Path, dict[str, Any]]) -> None:
    model_dir = tiny[0]
    with pytest.raises(ModelDirError, match=r"has no int8 graphs: run `fusionstream quantize`"):
        open_runtime("onnxruntime", model_dir, precision="int8")
    with pytest.raises(EngineError, match="fp16"):
        backend_class("onnxruntime").options_for(RuntimeChoices(precision="fp16"))
    assert backend_class("onnxruntime").options_for(RuntimeChoices(threads=2)) == {"threads": 2}
    assert backend_class("onnxruntime").options_for(RuntimeChoices(precision="int8")) == {"precision": "int8"}
    with pytest.raises(EngineError, match=r"onnxruntime backend: unknown option.*device"):
        open_runtime("onnxruntime", model_dir, device="cuda")
    runtime = open_runtime("onnxruntime", model_dir)
    with pytest.raises(EngineError, match="not active"):
        runtime.fuse({}, np.zeros((1, 3), np.float32))
    with runtime:
        with pytest.raises(EngineError, match="already active"):
            runtime.activate()
        with pytest.raises(InputError, match=r"audio encoder takes inputs input_values, got \['audio'\]"):
            runtime.encode("audio", {"audio": np.zeros((1, 100), np.float32)})
        with pytest.raises(InputError, match=r"audio input 'input_values' must be float32 \[n, 100\]"):
            runtime.encode("audio", {"input_values": np.zeros((1, 99), np.float32)})
        with pytest.raises(InputError, match="only 0 \\(absent\\) and 1"):
            runtime.fuse({m: np.zeros((1, n), np.float32) for m, n in runtime.sizes.items()},
                         np.full((1, 3), 0.5, np.float32))
        with pytest.raises(InputError, match="does not use smell"):
            runtime.fuse({m: np.zeros((1, n), np.float32) for m, n in runtime.sizes.items()}
                         | {"smell": np.zeros((1, 2), np.float32)}, np.ones((1, 3), np.float32))
        assert runtime.encode("audio", {"input_values": np.zeros((0, 100), np.float32)}).shape == (0, 5)
        assert runtime.graph_seconds == {}  # refused calls and an empty batch run no graph
    assert not runtime.is_active
    runtime.release()  # twice is fine


def test_a_tokenizer_larger_than_the_encoders_embedding_table_is_refused_at_load(
    tiny: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    # Ids past the table fail in the graph only when a caption has them: mid-serving, at every restart.
    from tokenizers import Tokenizer

    model_dir = _broken(tiny, tmp_path, lambda doc: None)
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tokenizer.add_tokens(["zebra", "quokka"])
    tokenizer.save(str(model_dir / "tokenizer.json"))
    size = tokenizer.get_vocab_size(with_added_tokens=True)
    with pytest.raises(ModelDirError, match=rf"modalities\.text\.preprocess\.tokenizer: tokenizer\.json has {size} "
                                            rf"tokens, and text\.onnx fails on the last one \(id {size - 1}\)"):
        open_runtime("onnxruntime", model_dir).activate()
