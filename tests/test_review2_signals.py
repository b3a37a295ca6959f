"""`harmonia encode` stopped by a real signal in the middle of writing an output."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import harmonia.cli as cli

FIX = Path(__file__).parent / "fixtures"
MS = FIX / "beats" / "beats_ms_iter3_small.pt"

# np.save writes the temp file, then hangs: the signal arrives while the output is half done.
HANG_IN_SAVE = """
import time, numpy as np
_save = np.save
def _hang(f, a, *args, **kwargs):
    _save(f, a, *args, **kwargs)
    f.flush()
    open({ready!r}, "w").close()
    time.sleep(120)
np.save = _hang
"""


@pytest.mark.slow
@pytest.mark.parametrize("sig, code, word", [(signal.SIGTERM, 143, "terminated"), (signal.SIGINT, 130, "interrupted")])
def test_a_signal_mid_write_exits_with_its_code_and_leaves_no_file(tmp_path, sig, code, word):
    ready, out = tmp_path / "ready", tmp_path / "out"
    prelude = HANG_IN_SAVE.format(ready=str(ready))
    code_text = f"import sys\n{prelude}\nfrom harmonia.cli import main\nsys.exit(main(sys.argv[1:]))"
    proc = subprocess.Popen([sys.executable, "-c", code_text, "encode", "--model", str(MS), "--out", str(out),
                             str(FIX / "audio" / "example.wav")], stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # even if CI ignores ^C
    try:
        end = time.monotonic() + 300
        while not ready.exists() and proc.poll() is None and time.monotonic() < end:
            time.sleep(0.05)
        assert ready.exists(), proc.stderr.read() if proc.poll() is not None else "no write started"
        assert [p.name for p in out.iterdir() if "harmonia-tmp" in p.name]  # the temp file is there
        proc.send_signal(sig)
        rc = proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
    err = proc.stderr.read()
    assert rc == code and f"harmonia encode: {word}" in err and "Traceback" not in err, (rc, err)
    assert list(out.iterdir()) == []  # neither the temp file nor a partial output


def test_ctrl_c_during_start_up_is_exit_130_without_a_traceback(monkeypatch, capsys):
    def slow_imports():
        raise KeyboardInterrupt  # Ctrl-C while torch and the subcommands are being imported

    monkeypatch.setattr(cli, "build_parser", slow_imports)
    assert cli.main(["list"]) == 130
    assert capsys.readouterr().err.strip() == "harmonia: interrupted"


def test_the_sigterm_handler_is_restored_after_main(monkeypatch, capsys):
    before = signal.getsignal(signal.SIGTERM)
    assert cli.main(["list", "--json"]) == 0
    assert signal.getsignal(signal.SIGTERM) is before
