#!/usr/bin/env bash
# Side environment with the reference implementations that harmonia is checked against. It is used
# by tools/make_fixtures.py (the golden fixtures in tests/fixtures/), tools/reference_encode.py and
# the benchmarks; harmonia itself never imports anything from it.
#
#   Microsoft BEATs  github.com/microsoft/unilm, folder beats/, commit 768a3c8 (five source files,
#                    checked against their sha256 below)                 -> ENV/src/unilm-beats/
#   ESPnet BEATs     PyPI openbeats 0.1.1 (vendors ESPnet's BeatsEncoder)
#   Dasheng          PyPI dasheng 0.0.9
#   X-ARES           PyPI xares 0.1.3
#   optional (WITH_HF=1): the Hugging Face remote code of mispeech/dasheng-*
#                    (github.com/jimbozhang/hf_transformers_custom_model_dasheng @ 31f5d6d)
#                    and transformers 5.24.0                               -> ENV/src/hf-dasheng/
#
# All references import torchaudio. Its wheels pin one exact torch release and would pull a CUDA
# build, so torchaudio 2.11.0 is installed without dependencies next to CPU torch 2.13.0, and its
# compiled libraries are moved aside: the parts the references call (compliance.kaldi, the
# MelSpectrogram and AmplitudeToDB transforms) are plain Python and work; torchaudio's audio
# decoding does not (nothing here needs it).
#
# usage:  bash tools/make_reference_env.sh ENV
#         WITH_HF=1 bash tools/make_reference_env.sh ENV
# Offline, point to local git clones instead of downloading the two GitHub sources:
#         UNILM_GIT=/path/to/unilm/.git HF_DASHENG_GIT=/path/to/hf_dasheng/.git bash tools/make_reference_env.sh ENV
set -euo pipefail
env_dir=${1:?usage: make_reference_env.sh ENV}
unilm_commit=768a3c873f598bb9b4d4dfb9267b099e35f8fe56
hf_dasheng_commit=31f5d6dcfbf37a9fa6dc3b2c8262394dd195cd33

python3 -m venv "$env_dir"
py="$env_dir/bin/python"
"$py" -m pip install -q --upgrade pip
"$py" -m pip install -q torch==2.13.0 numpy einops pyyaml soundfile safetensors huggingface_hub packaging \
  loguru pytorch-ignite webdataset scikit-learn pandas tqdm
"$py" -m pip install -q --no-deps torchaudio==2.11.0 openbeats==0.1.1 dasheng==0.0.9 xares==0.1.3
site=$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
mkdir -p "$env_dir/torchaudio-compiled-libs"
mv "$site"/torchaudio/lib/*.so "$env_dir/torchaudio-compiled-libs/" 2>/dev/null || true

# fetch FILE from a GitHub repository at a commit: from a local clone when one is given, else over HTTPS
fetch() {  # fetch GIT_DIR_OR_EMPTY OWNER/REPO COMMIT PATH OUT
  if [ -n "$1" ]; then git --git-dir="$1" show "$3:$4" > "$5"
  else curl -fsSL "https://raw.githubusercontent.com/$2/$3/$4" -o "$5"; fi
}

src="$env_dir/src/unilm-beats"
mkdir -p "$src"
while read -r sum name; do
  fetch "${UNILM_GIT:-}" microsoft/unilm "$unilm_commit" "beats/$name" "$src/$name"
  echo "$sum  $src/$name" | sha256sum --check --quiet
done <<'SUMS'
27f289db7c56ce26f2ceb50d3719854b91b2dec1c2830d8b1dd8de1bbee19eeb BEATs.py
31c0378379a7e0f1d1069f9da444fb86890fe1ea078959a2dcd39640cdcadbaa backbone.py
edeb6b6cd6a784da749f932c3e0783c0bce556fc768d0d23a4d53d4b819eb424 modules.py
8374ad599cf593d11043c5099a513456e1249fdba5ed3b37517271c77c698f6f Tokenizers.py
8d15198f22618db773a5fed2ca416fbde67c7d56ce621822ab9d49d51e5534bb quantizer.py
SUMS

if [ "${WITH_HF:-0}" = 1 ]; then
  "$py" -m pip install -q transformers==5.24.0
  hf="$env_dir/src/hf-dasheng/dasheng_model"
  mkdir -p "$hf"
  for name in __init__.py configuration_dasheng.py feature_extraction_dasheng.py modeling_dasheng.py; do
    fetch "${HF_DASHENG_GIT:-}" jimbozhang/hf_transformers_custom_model_dasheng "$hf_dasheng_commit" \
      "dasheng_model/$name" "$hf/$name"
  done
fi

PYTHONPATH="$src" "$py" - <<'PY'
import torch, torchaudio
import torchaudio.compliance.kaldi
import BEATs, Tokenizers
from openbeats.beats_encoder import BeatsEncoder
from dasheng.pretrained.pretrained import Dasheng
from xares.audio_encoder_checker import check_audio_encoder
print(f"reference environment ready: torch {torch.__version__}, torchaudio {torchaudio.__version__} "
      "(pure Python), Microsoft BEATs, openbeats, dasheng, xares")
PY
