"""Publishing SVDQuant checkpoints to the Hugging Face Hub (installed as ``svdquant_hf.hub_scripts``).

info.py: describe a checkpoint from configs + safetensors headers; model_card.py: README.md with YAML
metadata; push.py: create_repo + upload_folder with overwrite protection; publish.py: runnable script.
"""
from .info import CheckpointInfo, NotACheckpointError, describe_hub, describe_local, format_info
from .model_card import build_model_card
from .push import PushError, plan_upload, publish

__all__ = ["CheckpointInfo", "NotACheckpointError", "describe_local", "describe_hub", "format_info",
           "build_model_card", "PushError", "plan_upload", "publish"]
