"""`harmonia encode`, `info`, `convert`, `bench` end to end through the real CLI entry point."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from harmonia import load_audio, load_encoder
from harmonia.cli import main

FIX = Path(__file__).parent / "fixtures"
MS = FIX / "beats" / "beats_ms_iter3_small.pt"


def test_encode_files_of_several_rates_and_channels(tmp_path, capsys):
    g = np.random.default_rng(0)
    sf.write(tmp_path / "a.wav", (g.standard_normal(48000) * 0.1).astype(np.float32), 48000)
    sf.write(tmp_path / "b.flac", (g.standard_normal((30000, 2)) * 0.1).astype(np.float32), 22050)
    files = [str(tmp_path / "a.wav"), str(tmp_path / "b.flac"), str(FIX / "audio" / "example.wav")]
    out = tmp_path / "out"
    assert main(["encode", "--model", str(MS), "--batch-size", "2", "--out", str(out), *files]) == 0
    enc = load_encoder(MS)
    for f in files:
        arr = np.load(out / f"{Path(f).stem}.npy")
        expected = enc(load_audio(f)[None])[0].numpy()  # the same clip encoded alone
        assert arr.shape == expected.shape and np.abs(arr - expected).max() < 1e-5
    assert not list(out.glob("*.tmp"))


def test_encode_reports_bad_files_and_keeps_going(tmp_path, capsys):
    (tmp_path / "broken.wav").write_bytes(b"not audio at all")
    good = FIX / "audio" / "example.wav"
    rc = main(["encode", "--model", str(MS), "--out", str(tmp_path / "o"), str(tmp_path / "broken.wav"),
               str(tmp_path / "missing.flac"), str(good)])
    err = capsys.readouterr().err
    assert rc == 1
    assert "broken.wav" in err and "missing.flac" in err and "2 file(s) failed" in err
    assert (tmp_path / "o" / "example.npy").exists() and not (tmp_path / "o" / "broken.npy").exists()


def test_encode_layout_layer_and_chunk_options(tmp_path):
    good = str(FIX / "audio" / "example.wav")
    assert main(["encode", "--model", str(MS), "--layout", "concat", "--layer", "2", "--chunk-seconds", "1",
                 "--out", str(tmp_path), good]) == 0
    arr = np.load(tmp_path / "example.npy")
    assert arr.shape == (19, 8 * 64)


def test_info_and_convert(tmp_path, capsys):
    assert main(["info", str(MS), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["family"] == "beats" and info["output_dim"] == 64 and info["hop_size_in_ms"] == 20.0
    # parameter count of the fixture: recomputed here from the checkpoint's own tensors
    ck = torch.load(MS, weights_only=True)["model"]
    tied = [k for k in ck if "relative_attention_bias" in k and ".layers.0." not in k]
    assert info["parameters"] == sum(v.numel() for k, v in ck.items() if k not in tied)
    assert main(["convert", str(MS), str(tmp_path / "conv")]) == 0
    assert (tmp_path / "conv" / "config.json").exists() and (tmp_path / "conv" / "model.safetensors").exists()
    wav = load_audio(FIX / "audio" / "example.wav")[None]
    assert torch.equal(load_encoder(tmp_path / "conv")(wav), load_encoder(MS)(wav))


def test_bench_prints_one_json_line():
    out = subprocess.run([sys.executable, "-m", "harmonia", "bench", "--model", str(MS), "--seconds", "1",
                          "--repeats", "2"], capture_output=True, text=True, check=True).stdout.strip()
    res = json.loads(out)
    assert res["audio_s_per_s"] > 0 and res["peak_rss_mb"] > 0 and res["batch"] == 1
