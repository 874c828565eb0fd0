"""Windows to a format-1 model's positional inputs (:class:`~fusionstream.engines.features.Batch`), for training.

Serving prepares each modality's input with the manifest's preprocessing
(:class:`~fusionstream.engines.preprocess.Preprocessor`, through :mod:`~fusionstream.consumers.pipeline.reuse`);
for a format-1 model both give the same arrays, so a model is trained on what it is served
(``tests/consumers/test_pipeline.py`` checks it).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fusionstream.engines.features import Batch, frames_to_array, text_to_ids
from fusionstream.engines.spec import ModelSpec
from fusionstream.stream.windows import Window


class Featurizer:
    """Builds a :class:`~fusionstream.engines.features.Batch` from closed windows, zeros for absent modalities."""

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        self._no_video = np.zeros((spec.frames_per_window, 3, spec.image_size, spec.image_size), np.float32)
        self._no_text = np.zeros(spec.text_max_len, np.int64)

    def __call__(self, windows: Sequence[Window]) -> Batch:
        video = np.stack([frames_to_array(w.frames, self.spec) if w.frames else self._no_video for w in windows])
        audio = np.stack([w.audio for w in windows])
        text = np.stack([text_to_ids(w.transcript, self.spec) if w.text else self._no_text for w in windows])
        mask = np.array([w.mask for w in windows], dtype=np.float32)
        return Batch(video=video, audio=audio, text=text, mask=mask)
