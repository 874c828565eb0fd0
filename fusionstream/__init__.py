"""fusionstream: streaming multimodal inference on Kafka, aligned by event time.

One import namespace with three parts, one job each:

- :mod:`fusionstream.stream` — what flows: the wire format, media decoding, sources, alignment into windows;
- :mod:`fusionstream.engines` — what computes: encoders, fusion heads, export, backends, model directories;
- :mod:`fusionstream.consumers` — what runs: the Kafka service, the embedded pipeline, subscribers, the CLI.

In the repository the three parts sit at the top level (``stream/``, ``engines/``, ``consumers/``);
the build maps them under this package, so an installed wheel has ``fusionstream`` as its only
top-level name.
"""

from importlib.metadata import PackageNotFoundError as _PackageNotFoundError
from importlib.metadata import version as _version
from pathlib import Path as _Path

_HERE = _Path(__file__).resolve().parent
if not (_HERE / "stream").is_dir() and (_HERE.parent / "stream" / "__init__.py").is_file():
    # A source checkout run without installing (PYTHONPATH=<repo>, as scripts/gpu_check.sh does on a
    # bare GPU machine): the three parts sit beside this folder, so look for subpackages there too.
    # An installed wheel has them inside this folder; an editable install maps them (pyproject.toml).
    __path__.append(str(_HERE.parent))

try:
    __version__ = _version("fusionstream")
except _PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["__version__"]
