"""Camera and microphone sources.

This machine has no camera and no microphone (nor PortAudio), so ``cv2.VideoCapture`` and
``sounddevice.InputStream`` are replaced by small fakes that deliver real frames and real
speech PCM; a video file opened as a stream URL runs the real OpenCV path end to end.
"""

from __future__ import annotations

import importlib.abc
import itertools
import sys
import threading
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from fusionstream.stream import wire
from fusionstream.stream.media import decode_media
from fusionstream.stream.records import AudioChunk, Frame, Modality, Record
from fusionstream.stream.sources.devices import RESYNC_NS, DeviceError, camera_records, microphone_records
from fusionstream.stream.sources.speech import SpeechBank
from fusionstream.units import MS, NS

T0 = 1_767_225_600_000_000_000
# A microphone iterator waits for blocks while its stream is active: a bug shows as a hang, not a failure.
pytestmark = pytest.mark.timeout(30)


def roundtrip(record: Record) -> Record:
    assert wire.decode(wire.encode(record)) == record
    return record


def image_of(record: Record) -> np.ndarray:
    item = decode_media(record)
    assert isinstance(item, Frame)
    return item.image


def samples_of(record: Record) -> np.ndarray:
    item = decode_media(record)
    assert isinstance(item, AudioChunk)
    return item.samples


class TickClock:
    """A wall clock that advances ``step_ns`` each time it is read."""

    def __init__(self, step_ns: int, start: int = T0) -> None:
        self.now, self.step = start - step_ns, step_ns

    def __call__(self) -> int:
        self.now += self.step
        return self.now


# -- camera --------------------------------------------------------------------------------------


def bgr_frame(index: int) -> np.ndarray:
    """What the fake camera sees: a blue-ish BGR frame whose red channel counts frames."""
    frame = np.zeros((120, 160, 3), np.uint8)
    frame[..., 0] = 200  # blue, in OpenCV's BGR order
    frame[..., 2] = (index * 10) % 250
    return frame


class FakeCamera:
    """Stands in for ``cv2.VideoCapture`` on a machine without /dev/video*: camera 0 exists."""

    instances: list[FakeCamera] = []  # noqa: RUF012 - test bookkeeping

    def __init__(self, source: int | str, frames: int = 30, fps: float = 30.0) -> None:
        self.source, self.left, self.index, self.fps = source, frames, 0, fps
        self.released = False
        self.retrieved = 0
        self.requested: dict[int, float] = {}
        FakeCamera.instances.append(self)

    def isOpened(self) -> bool:  # noqa: N802 - OpenCV's name
        return self.source == 0 and not self.released

    def grab(self) -> bool:
        if self.released or self.left == 0:
            return False
        self.left -= 1
        self.index += 1
        return True

    def retrieve(self) -> tuple[bool, np.ndarray | None]:
        self.retrieved += 1
        return True, bgr_frame(self.index - 1)

    def read(self) -> tuple[bool, np.ndarray | None]:
        return self.retrieve() if self.grab() else (False, None)

    def get(self, prop: int) -> float:
        return self.fps if prop == cv2.CAP_PROP_FPS else 0.0

    def set(self, prop: int, value: float) -> bool:
        self.requested[prop] = value
        return True  # like many cameras: accepted, then ignored

    def release(self) -> None:
        self.released = True


@pytest.fixture
def fake_camera(monkeypatch: pytest.MonkeyPatch) -> type[FakeCamera]:
    FakeCamera.instances = []
    monkeypatch.setattr(cv2, "VideoCapture", FakeCamera)
    return FakeCamera


def test_camera_frames_are_stamped_at_grab(fake_camera: type[FakeCamera]) -> None:
    clock = TickClock(33 * MS)
    with camera_records(0, "cam-0", size=(80, 80), clock=clock) as camera:
        records = [roundtrip(r) for r in itertools.islice(camera, 5)]
    (device,) = fake_camera.instances
    assert device.released
    assert [r.seq for r in records] == [0, 1, 2, 3, 4]
    assert [r.t_start_ns - T0 for r in records] == [i * 33 * MS for i in range(5)]
    assert all(r.t_end_ns - r.t_start_ns == round(NS / 30) for r in records)  # 1 / the camera's fps
    for i, record in enumerate(records):
        image = image_of(record)
        assert image.shape == (60, 80, 3)
        # RGB on the wire: blue stays in the last channel, the frame counter in the first.
        assert abs(int(image[..., 2].mean()) - 200) < 8
        assert abs(int(image[..., 0].mean()) - i * 10) < 8


def test_camera_fps_cap_drops_early_frames_without_decoding(fake_camera: type[FakeCamera]) -> None:
    # A 30 fps camera that ignores the request for 10 fps.
    camera = camera_records(0, "cam-0", fps=10, clock=TickClock(round(NS / 30)))
    records = list(itertools.islice(camera, 6))
    camera.close()
    (device,) = fake_camera.instances
    assert device.requested[cv2.CAP_PROP_FPS] == 10.0
    gaps = np.diff([r.t_start_ns for r in records])
    assert np.allclose(gaps, NS / 10, atol=2 * MS)
    assert all(r.t_end_ns - r.t_start_ns == NS // 10 for r in records)
    assert device.retrieved == 6  # the frames in between were grabbed, never decoded
    assert device.index == 16


def test_camera_that_stops_raises_and_releases(fake_camera: type[FakeCamera]) -> None:
    camera = camera_records(0, "cam-0", clock=TickClock(MS))
    with pytest.raises(DeviceError, match="camera 0 stopped"):
        for _ in camera:
            pass
    assert fake_camera.instances[0].released
    assert list(camera) == []  # closed: iteration stays stopped


def test_closed_camera_stops_iterating(fake_camera: type[FakeCamera]) -> None:
    camera = camera_records(0, "cam-0")
    next(camera)
    camera.close()
    camera.close()  # idempotent
    assert list(camera) == []
    assert fake_camera.instances[0].released


def test_missing_camera_is_a_clear_error(fake_camera: type[FakeCamera]) -> None:
    with pytest.raises(DeviceError, match=r"cannot open camera 3 \(is a camera connected"):
        camera_records(3, "cam-3")
    assert fake_camera.instances[0].released
    with pytest.raises(ValueError, match="fps"):
        camera_records(0, "cam-0", fps=0)


def test_stream_url_through_real_opencv(tmp_path: Path) -> None:
    # No mock: OpenCV opens a video file the way it opens a stream URL, and a stream that ends just ends.
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (160, 120))
    for i in range(12):
        writer.write(bgr_frame(i))
    writer.release()
    with camera_records(str(path), "rtsp-1", clock=TickClock(MS)) as camera:
        records = [roundtrip(r) for r in camera]
    assert len(records) == 12
    assert all(r.t_end_ns - r.t_start_ns == NS // 10 for r in records)
    assert abs(int(image_of(records[5])[..., 0].mean()) - 50) < 8
    with pytest.raises(DeviceError, match="cannot open video stream"):
        camera_records(str(tmp_path / "nothing.mp4"), "rtsp-1")


# -- microphone ----------------------------------------------------------------------------------


class Flags:
    def __init__(self, input_overflow: bool = False) -> None:
        self.input_overflow = input_overflow

    def __bool__(self) -> bool:
        return self.input_overflow


class FakeInputStream:
    """Stands in for ``sounddevice.InputStream``: the test pushes real PCM blocks through the callback."""

    instances: list[FakeInputStream] = []  # noqa: RUF012 - test bookkeeping

    def __init__(self, *, callback: Callable[..., None], device: Any = None, **kwargs: Any) -> None:
        if device == "missing":
            raise FakePortAudioError("Error querying device 7")
        self.callback, self.device, self.kwargs = callback, device, kwargs
        self.active = False
        self.closed = False
        FakeInputStream.instances.append(self)

    def start(self) -> None:
        self.active = True

    def stop(self) -> None:
        self.active = False

    def close(self) -> None:
        self.closed = True

    def deliver(self, block: np.ndarray, adc_s: float = 0.0, now_s: float = 0.0, overflow: bool = False) -> None:
        """One PortAudio callback: int16 samples shaped (frames, 1), times on the stream clock."""
        info = types.SimpleNamespace(inputBufferAdcTime=adc_s, currentTime=now_s, outputBufferDacTime=0.0)
        self.callback(block.reshape(-1, 1), len(block), info, Flags(overflow))


class FakePortAudioError(Exception):
    pass


@pytest.fixture
def fake_sounddevice(monkeypatch: pytest.MonkeyPatch) -> type[FakeInputStream]:
    FakeInputStream.instances = []
    module = types.ModuleType("sounddevice")
    module.InputStream = FakeInputStream  # type: ignore[attr-defined]
    module.PortAudioError = FakePortAudioError  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "sounddevice", module)
    return FakeInputStream


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    """About 1.5 s of real speech (three espeak-ng digits) as int16 at 16 kHz."""
    bank = SpeechBank.load("all")
    pcm = np.concatenate([bank[d][0].samples for d in (3, 1, 4)] + [np.zeros(4000, np.float32)])
    return (pcm * 32767).astype(np.int16)


def blocks(pcm: np.ndarray, size: int) -> Iterator[np.ndarray]:
    for at in range(0, len(pcm), size):
        yield pcm[at : at + size]


def test_microphone_chunks_tile_and_carry_the_samples(
    fake_sounddevice: type[FakeInputStream], speech: np.ndarray
) -> None:
    now = [T0]
    mic = microphone_records("mic-0", sample_rate=16_000, chunk_ms=40, clock=lambda: now[0])
    (stream,) = fake_sounddevice.instances
    assert stream.kwargs == {"samplerate": 16_000, "blocksize": 640, "channels": 1, "dtype": "int16"}
    assert stream.active
    # Each callback runs 5 ms after its block's last sample was digitised. Blocks of another
    # size than asked for are re-cut into 640-sample chunks; odd blocks come without ADC times
    # (as on some host APIs), so their stamps are arrival minus duration, 5 ms late: jitter.
    done = 0
    for i, block in enumerate(blocks(speech, 1000)):
        duration_s = len(block) / 16_000
        done += len(block)
        now[0] = T0 + done * NS // 16_000 + 5 * MS
        adc_s = 0.0 if i % 2 else 100.0
        stream.deliver(block, adc_s=adc_s, now_s=100.0 + duration_s + 0.005)
    records = [next(mic) for _ in range(len(speech) // 640)]
    mic.close()
    assert not stream.active and stream.closed
    assert list(mic) == []
    assert records[0].t_start_ns == T0  # the first sample's ADC time on the wall clock
    for record in records:
        roundtrip(record)
        assert record.modality is Modality.AUDIO and record.meta == {"sample_rate": 16_000, "channels": 1}
    assert all(b.t_start_ns == a.t_end_ns for a, b in itertools.pairwise(records))
    assert {len(r.payload) for r in records} == {1280}
    payload = b"".join(r.payload for r in records)
    assert payload == speech[: len(payload) // 2].tobytes()  # bit for bit what the microphone heard
    rms = [float(np.sqrt(np.mean(samples_of(r) ** 2))) for r in records]
    assert max(rms) > 0.05 and min(rms) < 0.001  # speech, and the silence after it


def test_microphone_without_adc_time_uses_arrival(fake_sounddevice: type[FakeInputStream], speech: np.ndarray) -> None:
    with microphone_records("mic-0", clock=TickClock(0, T0)) as mic:
        fake_sounddevice.instances[0].deliver(speech[:640])
        assert next(mic).t_start_ns == T0 - 40 * MS


def test_microphone_overflow_and_drift_restart_the_timeline(
    fake_sounddevice: type[FakeInputStream], speech: np.ndarray
) -> None:
    now = [T0]
    mic = microphone_records("mic-0", chunk_ms=40, clock=lambda: now[0])
    stream = fake_sounddevice.instances[0]

    def deliver(block: np.ndarray, **kwargs: Any) -> None:
        now[0] += len(block) * NS // 16_000
        stream.deliver(block, **kwargs)

    deliver(speech[:640])
    deliver(speech[640:1000])  # a partial chunk is pending...
    deliver(speech[1000:1640], overflow=True)  # ...when PortAudio reports lost input
    got = [next(mic) for _ in range(3)]
    assert [len(r.payload) // 2 for r in got] == [640, 360, 640]  # the run before the overflow ends short
    assert got[1].t_start_ns == got[0].t_end_ns
    assert got[2].t_start_ns == now[0] - 40 * MS  # the new run starts from this block's own stamp
    now[0] += RESYNC_NS + 10 * MS  # the callback comes far later than the sample count says: samples lost
    deliver(speech[1640:2280])
    late = next(mic)
    assert late.t_start_ns - got[2].t_end_ns == RESYNC_NS + 10 * MS
    mic.close()


def test_microphone_drops_blocks_when_the_reader_falls_behind(
    fake_sounddevice: type[FakeInputStream], speech: np.ndarray
) -> None:
    now = [T0]
    mic = microphone_records("mic-0", chunk_ms=40, clock=lambda: now[0])
    stream = fake_sounddevice.instances[0]
    capacity = mic._queue.maxsize  # 2 s of blocks
    for block in itertools.islice(itertools.cycle(blocks(speech[: 640 * 10], 640)), capacity + 3):
        now[0] += 40 * MS
        stream.deliver(block)
    assert mic.dropped_blocks == 3
    records = [next(mic) for _ in range(capacity)]
    now[0] += 40 * MS
    stream.deliver(speech[:640])  # flagged: blocks were lost before it
    after = next(mic)
    assert all(b.t_start_ns == a.t_end_ns for a, b in itertools.pairwise(records))
    assert after.t_start_ns - records[-1].t_end_ns == 3 * 40 * MS
    mic.close()


def test_microphone_callback_from_another_thread(fake_sounddevice: type[FakeInputStream], speech: np.ndarray) -> None:
    # As with PortAudio, the callback runs on its own thread while the reader waits on the queue.
    mic = microphone_records("mic-0", chunk_ms=20, clock=TickClock(20 * MS))
    stream = fake_sounddevice.instances[0]

    def play() -> None:
        for block in blocks(speech[: 320 * 25], 320):
            stream.deliver(block)

    player = threading.Thread(target=play)
    player.start()
    records = [next(mic) for _ in range(25)]
    player.join()
    assert b"".join(r.payload for r in records) == speech[: 320 * 25].tobytes()
    assert all(b.t_start_ns == a.t_end_ns for a, b in itertools.pairwise(records))
    mic.close()


def test_microphone_that_dies_raises(fake_sounddevice: type[FakeInputStream]) -> None:
    mic = microphone_records("mic-0")
    fake_sounddevice.instances[0].active = False  # PortAudio stopped the stream: device unplugged
    with pytest.raises(DeviceError, match="stopped delivering"):
        next(mic)
    assert fake_sounddevice.instances[0].closed


def test_no_microphone_is_a_clear_error(fake_sounddevice: type[FakeInputStream]) -> None:
    with pytest.raises(DeviceError, match="cannot open microphone 'missing': Error querying device"):
        microphone_records("mic-0", device="missing")
    with pytest.raises(ValueError, match="sample_rate"):
        microphone_records("mic-0", sample_rate=0)


class _NoPortAudio(importlib.abc.MetaPathFinder):
    """What importing sounddevice does on a machine without libportaudio2."""

    def find_spec(self, name: str, *args: object) -> None:
        if name == "sounddevice":
            raise OSError("PortAudio library not found")


def test_missing_portaudio_or_package_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "sounddevice", raising=False)
    monkeypatch.setattr(sys, "meta_path", [_NoPortAudio(), *sys.meta_path])
    with pytest.raises(DeviceError, match="needs the PortAudio library"):
        microphone_records("mic-0")
    monkeypatch.setitem(sys.modules, "sounddevice", None)  # not installed at all
    with pytest.raises(DeviceError, match="needs the sounddevice package"):
        microphone_records("mic-0")
