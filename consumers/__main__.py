"""``python -m consumers``: the ``fusionstream`` command without installing the package's script
(what ``scripts/gpu_check.sh`` uses on a machine where nothing is installed)."""

from consumers.cli import app

if __name__ == "__main__":  # not when multiprocessing's spawn re-imports the main module
    app(prog_name="fusionstream")
