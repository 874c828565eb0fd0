"""Live device sources: a camera or network video stream (OpenCV) and a microphone (sounddevice).

Live media has no pts to trust across producers, so records carry the wall clock
(docs/wire-format.md: NTP-synchronised, shared by all producers of a stream). Both sources are
iterators that hold a device: use them as context managers, or call ``close()``, to
release it. They are not thread-safe; close them from the thread that iterates.

sounddevice is imported only when a microphone is opened: it loads the PortAudio
library at import time, which servers and CI machines often do not have.
"""

from __future__ import annotations

import collections
import math
import queue
import time
from collections.abc import Callable
from types import ModuleType, TracebackType
from typing import Any, NoReturn, Self

import cv2
import numpy as np

from fusionstream.stream.errors import FusionStreamError
from fusionstream.stream.media import image_record
from fusionstream.stream.records import Encoding, Record
from fusionstream.stream.sources.files import FALLBACK_FPS, Size, fit_size, pcm16_record, resize_to_fit
from fusionstream.units import NS

#: A microphone block stamped this far from where the sample count puts it restarts the
#: chunk timeline there: samples were lost, or the audio clock drifted from the wall clock.
#: About the threshold of noticeable lip-sync error, and well above callback jitter.
RESYNC_NS = 40_000_000
#: Frames arriving this share of a period early still count as on time when capping the rate.
_EARLY_TOLERANCE = 0.1


class DeviceError(FusionStreamError):
    """A camera, video stream or microphone that cannot be opened, or that stopped delivering."""

    # Plugging the device back in, or the stream coming back, lets the same call succeed.
    retriable = True


class CameraRecords:
    """Frames from a camera index or a video URL, stamped with the wall clock when grabbed.

    Iterate it for records; ``close()`` (or leaving a ``with`` block) releases the device.
    """

    def __init__(
        self,
        source: int | str,
        stream_id: str,
        *,
        fps: float | None = None,
        size: Size | None = None,
        quality: int = 85,
        encoding: Encoding = Encoding.JPEG,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        if fps is not None and not fps > 0:
            raise ValueError(f"fps must be > 0, got {fps}")
        if size is not None:
            fit_size(1, 1, size)
        self.source = source
        self.stream_id = stream_id
        self._size, self._quality, self._encoding, self._clock = size, quality, encoding, clock
        self._capture = _open_capture(source)
        if fps is not None:
            # Only a request: many cameras ignore it, so the rate is also capped below.
            self._capture.set(cv2.CAP_PROP_FPS, float(fps))
        declared = self._capture.get(cv2.CAP_PROP_FPS)
        self.fps = fps or (declared if math.isfinite(declared) and declared > 0 else FALLBACK_FPS)
        self._period_ns = round(NS / self.fps)
        self._cap_rate = fps is not None
        self._next_due: int | None = None
        self._seq = 0
        self._closed = False

    def __iter__(self) -> Self:
        return self

    def __next__(self) -> Record:
        while not self._closed:
            # grab() returns as soon as a frame is in; decoding it (retrieve) is not part of capture time.
            if not self._capture.grab():
                self._stopped()
            t_start = self._clock()
            if self._cap_rate and not self._on_time(t_start):
                continue  # dropped without paying for its decoding
            ok, bgr = self._capture.retrieve()
            if not ok or bgr is None:
                self._stopped()
            rgb = cv2.cvtColor(resize_to_fit(bgr, self._size), cv2.COLOR_BGR2RGB)
            record = image_record(
                self.stream_id,
                self._seq,
                t_start,
                t_start + self._period_ns,
                rgb,
                encoding=self._encoding,
                quality=self._quality,
            )
            self._seq += 1
            return record
        raise StopIteration

    def close(self) -> None:
        """Release the camera or stream; iteration then stops. Idempotent."""
        if not self._closed:
            self._closed = True
            self._capture.release()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _on_time(self, now: int) -> bool:
        """Whether a frame grabbed at ``now`` is kept when capping the rate at ``fps``."""
        due = self._next_due
        if due is None or now - due >= self._period_ns:
            self._next_due = now + self._period_ns  # first frame, or after a stall: restart the grid here
            return True
        if now < due - _EARLY_TOLERANCE * self._period_ns:
            return False
        # Stay on the grid while keeping up, so that the average rate is fps however frames jitter.
        self._next_due = due + self._period_ns
        return True

    def _stopped(self) -> NoReturn:
        self.close()
        if isinstance(self.source, int):
            raise DeviceError(f"camera {self.source} stopped delivering frames")
        raise StopIteration  # a stream or file that ends has simply ended


class MicrophoneRecords:
    """Mono ``pcm-s16le`` chunks from a microphone, timed from the audio callback.

    The PortAudio callback only copies each block into a bounded queue (it must never block
    or allocate much); iterating cuts the blocks into ``chunk_ms`` chunks. A chunk's
    ``t_start`` is the wall-clock time of its first sample: the first block is stamped from
    the callback's ADC time (``inputBufferAdcTime``) mapped onto the wall clock, or from
    its arrival minus its duration where the host API reports no ADC time; later chunks
    follow from the sample count, so they tile the timeline exactly. When a block arrives
    more than :data:`RESYNC_NS` away from where the count puts it (lost samples, an
    overflow, clock drift), the timeline restarts at that block's stamp.

    When the consumer falls behind, blocks are dropped (counted in ``dropped_blocks``)
    rather than letting memory grow; the timeline restarts after the gap.
    """

    def __init__(
        self,
        stream_id: str,
        *,
        sample_rate: int = 16_000,
        chunk_ms: float = 40,
        device: int | str | None = None,
        clock: Callable[[], int] = time.time_ns,
        buffer_s: float = 2.0,
    ) -> None:
        if not 1 <= sample_rate <= 384_000:
            raise ValueError(f"sample_rate {sample_rate} outside 1..384000")
        if not chunk_ms > 0 or not buffer_s > 0:
            raise ValueError("chunk_ms and buffer_s must be > 0")
        self.stream_id = stream_id
        self.sample_rate = sample_rate
        self.chunk = max(1, round(sample_rate * chunk_ms / 1000))
        self.dropped_blocks = 0
        self._clock = clock
        self._queue: queue.Queue[tuple[np.ndarray, int, bool]] = queue.Queue(
            maxsize=max(4, math.ceil(buffer_s * 1000 / chunk_ms))
        )
        self._lost = False  # touched by the callback thread only
        self._ready: collections.deque[Record] = collections.deque()
        self._pending = np.empty(0, dtype=np.int16)
        self._anchor: int | None = None  # wall time of the current run's first sample
        self._done = 0  # samples of the current run already in records
        self._seq = 0
        self._closed = False
        sd = _sounddevice()
        what = "the default microphone" if device is None else f"microphone {device!r}"
        try:
            self._stream = sd.InputStream(
                samplerate=sample_rate,
                blocksize=self.chunk,
                device=device,
                channels=1,
                dtype="int16",
                callback=self._callback,
            )
        except (sd.PortAudioError, ValueError, OSError) as exc:
            raise DeviceError(f"cannot open {what}: {exc}") from exc
        try:
            self._stream.start()
        except (sd.PortAudioError, OSError) as exc:
            self._stream.close()
            raise DeviceError(f"cannot start {what}: {exc}") from exc

    def __iter__(self) -> Self:
        return self

    def __next__(self) -> Record:
        while not self._ready:
            if self._closed:
                raise StopIteration
            try:
                block, stamp, discontinuity = self._queue.get(timeout=0.1)
            except queue.Empty:
                # Polling rather than blocking, so that a device that died is noticed.
                if not self._stream.active and not self._closed:
                    self.close()
                    raise DeviceError("the microphone stopped delivering audio") from None
                continue
            self._push(block, stamp, discontinuity)
        return self._ready.popleft()

    def close(self) -> None:
        """Stop and close the input stream; iteration then stops. Idempotent."""
        if not self._closed:
            self._closed = True
            try:
                self._stream.stop()
            finally:
                self._stream.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- the PortAudio thread -------------------------------------------------------------------

    def _callback(self, indata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        now = self._clock()
        adc = getattr(time_info, "inputBufferAdcTime", 0.0)
        current = getattr(time_info, "currentTime", 0.0)
        # Both times are on PortAudio's stream clock; their difference is how long ago the first
        # sample was digitised. Some host APIs report 0, or nonsense, and then arrival time must do.
        latency = current - adc
        if adc > 0 and current > 0 and 0 <= latency < 1.0:
            stamp = now - round(latency * NS)
        else:
            stamp = now - frames * NS // self.sample_rate
        # indata is PortAudio's buffer, reused after we return, hence the copy.
        item = (np.array(indata[:, 0] if indata.ndim == 2 else indata, dtype=np.int16), stamp)
        discontinuity = self._lost or bool(getattr(status, "input_overflow", False))
        try:
            self._queue.put_nowait((*item, discontinuity))
            self._lost = False
        except queue.Full:
            self.dropped_blocks += 1
            self._lost = True

    # -- the consumer thread ---------------------------------------------------------------------

    def _push(self, block: np.ndarray, stamp: int, discontinuity: bool) -> None:
        if self._anchor is not None:
            expected = self._anchor + (self._done + len(self._pending)) * NS // self.sample_rate
            if discontinuity or abs(stamp - expected) > RESYNC_NS:
                if len(self._pending):
                    self._emit(self._pending)
                self._anchor = None
        if self._anchor is None:
            self._anchor, self._done, self._pending = stamp, 0, np.empty(0, dtype=np.int16)
        pending = np.concatenate((self._pending, block)) if len(self._pending) else block
        cut = len(pending) - len(pending) % self.chunk
        for at in range(0, cut, self.chunk):
            self._emit(pending[at : at + self.chunk])
        self._pending = pending[cut:]

    def _emit(self, samples: np.ndarray) -> None:
        assert self._anchor is not None
        t_start = self._anchor + self._done * NS // self.sample_rate
        self._done += len(samples)
        t_end = self._anchor + self._done * NS // self.sample_rate
        self._ready.append(pcm16_record(self.stream_id, self._seq, t_start, t_end, samples, self.sample_rate))
        self._seq += 1


def camera_records(
    index_or_url: int | str,
    stream_id: str,
    *,
    fps: float | None = None,
    size: Size | None = None,
    quality: int = 85,
    clock: Callable[[], int] = time.time_ns,
) -> CameraRecords:
    """Open a camera (an index such as ``0``) or a video URL (``rtsp://…``, ``http://…``) as records.

    Each frame is stamped with ``clock()`` when grabbed, ``t_end`` = ``t_start`` + 1/fps;
    ``fps`` is requested from the device and also enforced by dropping early frames;
    ``size`` fits frames inside a box. ``DeviceError`` if nothing can be opened.
    """
    return CameraRecords(index_or_url, stream_id, fps=fps, size=size, quality=quality, clock=clock)


def microphone_records(
    stream_id: str,
    *,
    sample_rate: int = 16_000,
    chunk_ms: float = 40,
    device: int | str | None = None,
    clock: Callable[[], int] = time.time_ns,
) -> MicrophoneRecords:
    """Open a microphone (the default input, or ``device`` by index or name) and start capturing.

    ``DeviceError`` if PortAudio is missing or there is no such input device.
    """
    return MicrophoneRecords(stream_id, sample_rate=sample_rate, chunk_ms=chunk_ms, device=device, clock=clock)


def _open_capture(source: int | str) -> Any:
    what = f"camera {source}" if isinstance(source, int) else f"video stream {source!r}"
    # OpenCV's own WARN lines about each backend it tried (V4L2, FFmpeg) came before the one line below.
    level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    try:
        capture = cv2.VideoCapture(source)
    except cv2.error as exc:
        raise DeviceError(f"cannot open {what}: {exc}") from exc
    finally:
        cv2.utils.logging.setLogLevel(level)
    if not capture.isOpened():
        capture.release()
        hint = " (is a camera connected, and is this user allowed to read /dev/video*?)" if "camera" in what else ""
        raise DeviceError(f"cannot open {what}{hint}")
    return capture


def _sounddevice() -> ModuleType:
    try:
        import sounddevice
    except ImportError as exc:
        raise DeviceError(f"microphone capture needs the sounddevice package: {exc}") from exc
    except OSError as exc:  # sounddevice loads PortAudio on import
        raise DeviceError(f"microphone capture needs the PortAudio library (libportaudio2): {exc}") from exc
    return sounddevice


__all__ = [
    "RESYNC_NS",
    "CameraRecords",
    "DeviceError",
    "MicrophoneRecords",
    "camera_records",
    "microphone_records",
]
