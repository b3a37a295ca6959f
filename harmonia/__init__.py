"""harmonia: general-purpose audio encoders (BEATs, OpenBEATs, Dasheng), their ensembles,
pre-training at scale and X-ARES-comparable evaluation."""

from harmonia.audio import load_audio
from harmonia.encoder import AudioEncoder, EncoderOutput
from harmonia.ensemble import EnsembleEncoder, align_frames
from harmonia.hub import list_encoders, load_encoder

__all__ = ["AudioEncoder", "EncoderOutput", "EnsembleEncoder", "align_frames", "list_encoders", "load_audio", "load_encoder"]
__version__ = "0.1.0"
