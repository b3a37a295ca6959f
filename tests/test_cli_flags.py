"""Flags of the evaluate and pretrain commands are validated before any work (one line, exit 2)."""

from __future__ import annotations

import pytest
import torch

from harmonia.cli import main


@pytest.mark.parametrize("argv, flag", [
    (["pretrain", "beats_tiny_debug", "--iterations", "0"], "--iterations"),
    (["pretrain", "beats_tiny_debug", "--iterations", "-2"], "--iterations"),
    (["evaluate", "--model", "x", "--data-root", ".", "--out", "o", "--device", "banana"], "--device"),
])
def test_bad_flag_values_are_refused_naming_the_flag(argv, flag, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2 and flag in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_evaluate_on_cuda_without_a_gpu_says_so(capsys):
    with pytest.raises(SystemExit) as e:
        main(["evaluate", "--model", "x", "--data-root", ".", "--out", "o", "--device", "cuda:99"])
    assert e.value.code == 2 and "no usable CUDA GPU" in capsys.readouterr().err
