"""Interoperability with other SVDQuant checkpoint formats (Nunchaku, diffusers' nunchaku_lite)."""
from .nunchaku import NunchakuFormatError, export_nunchaku_lite, import_nunchaku, read_nunchaku, to_nunchaku_lite

__all__ = ["NunchakuFormatError", "import_nunchaku", "export_nunchaku_lite", "read_nunchaku", "to_nunchaku_lite"]
