"""Exotic flag values and options a model does not take: refused with one clear line, never a traceback."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from harmonia.cli import main

FIX = Path(__file__).parent / "fixtures"
MS = FIX / "beats" / "beats_ms_iter3_small.pt"
DASHENG = FIX / "dasheng" / "model_a.pt"
WAV = FIX / "audio" / "example.wav"


def refused_by_argparse(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize("argv, needle", [
    (["encode", "--model", str(MS), "--chunk-seconds", "1e308", "--out", "{out}", str(WAV)],
     "--chunk-seconds: expected a number of seconds > 0"),  # was OverflowError: cannot convert float infinity
    (["bench", "--model", str(MS), "--seconds", "1e308"], "--seconds: expected a number of seconds > 0"),
    (["encode", "--model", str(MS), "--device", "banana", "--out", "{out}", str(WAV)],
     "--device: expected a device such as cpu, cuda or cuda:1, found 'banana'"),  # was a raw RuntimeError
    (["bench", "--model", str(MS), "--device", "cuda:99"], "'cuda:99': this machine has"),  # was AssertionError
])
def test_exotic_flag_values_are_refused_before_any_work(tmp_path, capsys, argv, needle):
    err = refused_by_argparse([a.format(out=tmp_path / "out") for a in argv], capsys)
    assert needle in err and "Traceback" not in err, err
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")
def test_cuda_on_a_machine_without_cuda_says_so(tmp_path, capsys):
    err = refused_by_argparse(["encode", "--model", str(MS), "--device", "cuda", "--out", str(tmp_path), str(WAV)],
                              capsys)
    assert "no usable CUDA GPU" in err and "--device cpu" in err


@pytest.mark.parametrize("argv, flag", [
    (["encode", "--model", str(MS), "--reference", "-5", "--out", "{out}", str(WAV)], "--reference"),
    (["encode", "--model", str(MS), "--align", "linear", "--fuse", "mean", "--out", "{out}", str(WAV)],
     "--align, --fuse"),
    (["encode", "--model", str(DASHENG), "--layout", "concat", "--out", "{out}", str(WAV)], "--layout"),
    (["xares-export", "--model", str(MS), "--reference", "0", "--out", "{out}/plug_encoder.py"], "--reference"),
])
def test_a_flag_the_model_does_not_take_is_a_one_line_error(tmp_path, capsys, argv, flag):
    rc = main([a.format(out=tmp_path / "out") for a in argv])  # was a TypeError traceback
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert err.startswith(f"harmonia {argv[0]}: error: --model ") and f"{flag} does not apply" in err, err
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())  # nothing written


@pytest.mark.gpu
def test_encode_on_cuda_matches_cpu(tmp_path):
    """Not run without a GPU."""
    assert main(["encode", "--model", str(MS), "--out", str(tmp_path / "cpu"), str(WAV)]) == 0
    assert main(["encode", "--model", str(MS), "--device", "cuda", "--out", str(tmp_path / "gpu"), str(WAV)]) == 0
    cpu, gpu = np.load(tmp_path / "cpu" / "example.npy"), np.load(tmp_path / "gpu" / "example.npy")
    assert cpu.shape == gpu.shape and np.abs(cpu - gpu).max() < 1e-3


@pytest.mark.parametrize("argv", [
    ["encode", "--model", "no-such-model-anywhere", "--out", "{out}", str(WAV)],
    ["convert", "no-such-model-anywhere", "{out}"],
])
def test_a_model_that_cannot_be_loaded_leaves_no_output_folder(tmp_path, capsys, argv):
    assert main([a.format(out=tmp_path / "new" / "out") for a in argv]) == 2
    assert "no-such-model-anywhere" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()


def test_encode_never_writes_non_finite_frames(tmp_path, capsys):
    import soundfile as sf

    loud = tmp_path / "loud.wav"  # finite float samples, but 1e30: the features overflow
    sf.write(loud, (np.random.default_rng(0).standard_normal(16000) * 1e30).astype(np.float32), 16000,
             subtype="FLOAT")
    rc = main(["encode", "--model", str(MS), "--batch-size", "2", "--out", str(tmp_path / "o"), str(loud), str(WAV)])
    err = capsys.readouterr().err
    assert rc == 1 and "loud.wav: the encoder produced NaN or infinite frames" in err, err
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["example.npy"]
    assert np.isfinite(np.load(tmp_path / "o" / "example.npy")).all()


def test_one_file_named_twice_is_encoded_once_not_a_failure(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(WAV.parent)
    rc = main(["encode", "--model", str(MS), "--out", str(tmp_path / "o"), "example.wav", "./example.wav", str(WAV)])
    err = capsys.readouterr().err
    assert rc == 0 and "encoded 1/1" in err, err  # was exit 1: "same output name example.npy"
    assert [p.name for p in (tmp_path / "o").iterdir()] == ["example.npy"]


def test_two_different_files_with_one_stem_are_still_refused(tmp_path, capsys):
    import soundfile as sf

    flac = tmp_path / "example.flac"
    sf.write(flac, sf.read(WAV)[0], sf.info(WAV).samplerate)
    rc = main(["encode", "--model", str(MS), "--out", str(tmp_path / "o"), str(WAV), str(flac)])
    err = capsys.readouterr().err
    assert rc == 1 and "example.flac: same output name example.npy" in err, err
