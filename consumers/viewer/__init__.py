"""`fusionstream view`: a live web page of every stream's latest frame, prediction, audio level and transcript.

:mod:`~fusionstream.consumers.viewer.state` holds the latest of everything per stream,
:mod:`~fusionstream.consumers.viewer.feed` fills it from Kafka, :mod:`~fusionstream.consumers.viewer.server` serves
it (aiohttp, Server-Sent Events) to ``static/page.*``, and :mod:`~fusionstream.consumers.viewer.main`
runs the two together. docs/viewer.md describes the page.
"""

from fusionstream.consumers.viewer.main import DEFAULT_PORT, run_viewer, serve_viewer
from fusionstream.consumers.viewer.state import ViewerState

__all__ = ["DEFAULT_PORT", "ViewerState", "run_viewer", "serve_viewer"]
