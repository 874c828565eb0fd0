"""Per-modality encoders: each maps one modality's batch to ``[B, embed_dim]`` (imports torch)."""

from fusionstream.engines.encoders.audio import AudioEncoder, LogMel, hann_dft_basis, mel_filterbank
from fusionstream.engines.encoders.image import ImageEncoder
from fusionstream.engines.encoders.text import TextEncoder

__all__ = ["AudioEncoder", "ImageEncoder", "LogMel", "TextEncoder", "hann_dft_basis", "mel_filterbank"]
