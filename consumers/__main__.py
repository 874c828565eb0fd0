"""``python -m consumers``: the ``fusionstream`` command without installing the package's script
(what ``scripts/gpu_check.sh`` uses on a machine where nothing is installed)."""

from consumers.cli import app

app(prog_name="fusionstream")
