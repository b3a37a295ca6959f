"""`harmonia encode`, `info`, `convert`, `bench` end to end through the real CLI entry point."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from harmonia import load_audio, load_encoder
from harmonia.cli import main
from harmonia.io import temp_name

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


# -------------------------------------------------------------------------------------------------
# flags, temp files and the CLI's error policy


@pytest.mark.parametrize("argv", [
    ["encode", "--model", str(MS), "--out", "o", "--batch-size", "0", "x.wav"],
    ["encode", "--model", str(MS), "--out", "o", "--batch-size", "-1", "x.wav"],
    ["encode", "--model", str(MS), "--out", "o", "--chunk-seconds", "0", "x.wav"],
    ["bench", "--model", str(MS), "--repeats", "0"],
    ["bench", "--model", str(MS), "--seconds", "nan"],
    ["bench", "--model", str(MS), "--threads", "-2"],
])
def test_non_positive_numbers_are_refused_before_any_work(argv, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "expected" in err and ("integer >= 1" in err or "number > 0" in err or "seconds > 0" in err)
    assert not (tmp_path / "o").exists()


def test_encode_batch_size_larger_than_the_file_count_and_odd_sizes_encode_every_file(tmp_path):
    files = []
    for i in range(3):
        sf.write(tmp_path / f"f{i}.wav", np.random.default_rng(i).standard_normal(8000).astype(np.float32) * 0.1,
                 16000)
        files.append(str(tmp_path / f"f{i}.wav"))
    for bs in ("2", "5"):
        out = tmp_path / f"out{bs}"
        assert main(["encode", "--model", str(MS), "--batch-size", bs, "--out", str(out), *files]) == 0
        assert sorted(p.name for p in out.iterdir()) == ["f0.npy", "f1.npy", "f2.npy"]


def test_concurrent_writers_of_one_output_never_collide_or_expose_a_partial_file(tmp_path):
    """Two writers of one .npy (two `encode` runs into one folder) use distinct temp names; a reader
    only ever sees a whole array."""
    import threading

    from harmonia.commands import _save_npy_atomic

    target = tmp_path / "x.npy"
    arrays = [np.full((400, 256), k, np.float32) for k in (1, 2)]
    _save_npy_atomic(target, arrays[0])
    errors: list[BaseException] = []

    def write(a):
        try:
            for _ in range(40):
                _save_npy_atomic(target, a)
        except BaseException as e:  # noqa: BLE001 - surfaced by the assert below
            errors.append(e)

    threads = [threading.Thread(target=write, args=(a,)) for a in arrays]
    for t in threads:
        t.start()
    seen = set()
    while any(t.is_alive() for t in threads):
        got = np.load(target)
        assert got.shape == (400, 256) and np.unique(got).size == 1
        seen.add(float(got[0, 0]))
    for t in threads:
        t.join()
    assert not errors
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.npy"]  # no temp file left


def test_a_full_disk_mid_write_leaves_no_temp_file(tmp_path, monkeypatch, capsys):
    import errno

    real_save = np.save

    def save_then_fail(f, arr, *a, **k):
        real_save(f, arr[: len(arr) // 2], *a, **k)  # half the bytes reach the disk
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "save", save_then_fail)
    out = tmp_path / "out"
    rc = main(["encode", "--model", str(MS), "--out", str(out), str(FIX / "audio" / "example.wav")])
    assert rc == 1 and "No space left on device" in capsys.readouterr().err
    assert list(out.iterdir()) == []  # neither example.npy nor any (hidden) temp file


def test_stale_temp_of_a_dead_writer_is_removed_by_the_next_run(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    stale = temp_name(out / "example.npy", pid=int(dead))
    stale.write_bytes(b"half an array")
    unrelated = out / "notes.txt"
    unrelated.write_text("keep me")
    assert main(["encode", "--model", str(MS), "--out", str(out), str(FIX / "audio" / "example.wav")]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["example.npy", "notes.txt"]


def run_cli(*argv: str, env: dict | None = None, prelude: str = "") -> subprocess.CompletedProcess:
    """`python -m harmonia ARGV` (with optional Python run first in the same process)."""
    code = f"import sys\n{prelude}\nfrom harmonia.cli import main\nsys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=600)


def assert_one_line_error(res: subprocess.CompletedProcess, cmd: str, *needles: str) -> None:
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"harmonia {cmd}: error: "), res.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_cli_error_out_dir_is_a_file(tmp_path):
    (tmp_path / "taken").write_text("")
    res = run_cli("encode", "--model", str(MS), "--out", str(tmp_path / "taken"), str(FIX / "audio" / "example.wav"))
    assert_one_line_error(res, "encode", str(tmp_path / "taken"), "not a directory")


def test_cli_error_unknown_model_and_the_debug_traceback(tmp_path):
    argv = ("info", "no-such-model-anywhere")
    assert_one_line_error(run_cli(*argv), "info", "no-such-model-anywhere", "harmonia list")
    for res in (run_cli(*argv, "--debug"), run_cli(*argv, env={"HARMONIA_DEBUG": "1"})):
        assert res.returncode == 2 and "Traceback" in res.stderr
        assert res.stderr.strip().splitlines()[-1].startswith("harmonia info: error: ")


def test_cli_error_bad_checkpoint(tmp_path):
    bad = tmp_path / "model.pt"
    bad.write_text("<html>not a checkpoint</html>")
    res = run_cli("encode", "--model", str(bad), "--out", str(tmp_path / "o"), str(FIX / "audio" / "example.wav"))
    assert_one_line_error(res, "encode", str(bad))


def test_cli_error_bad_task_file(tmp_path):
    task = tmp_path / "mytask.json"
    task.write_text('{"name": "mybirds", "label_key": ')
    res = run_cli("evaluate", "--model", str(MS), "--tasks", str(task), "--data-root", str(tmp_path),
                  "--out", str(tmp_path / "o"))
    assert_one_line_error(res, "evaluate", str(task))


def test_cli_error_read_only_data_root_for_the_default_cache(tmp_path):
    root = tmp_path / "data"
    (root / "mytask").mkdir(parents=True)
    for k in (0, 1):  # the shards exist; the cache beside them cannot be written
        (root / "mytask" / f"fold{k}.tar").write_bytes(b"")
    task = tmp_path / "mytask.json"
    task.write_text(json.dumps({"name": "mytask", "formal_name": "My task", "domain": "sound", "label_key": "y",
                                "folds": ["0", "1"], "fold_pattern": "fold{k}.tar", "weight": 1}))
    prelude = ""
    if os.geteuid() == 0:  # root writes anywhere: make the folder refuse writes the way a read-only mount does
        prelude = ("import errno, pathlib\n_mkdir = pathlib.Path.mkdir\n"
                   "def mkdir(self, *a, **k):\n"
                   f"    if str(self).startswith({str(root)!r}):\n"
                   "        raise PermissionError(errno.EACCES, 'Permission denied', str(self))\n"
                   "    return _mkdir(self, *a, **k)\n"
                   "pathlib.Path.mkdir = mkdir")
    root.chmod(0o555)
    try:
        res = run_cli("evaluate", "--model", str(MS), "--tasks", str(task), "--data-root", str(root),
                      "--out", str(tmp_path / "o"), prelude=prelude)
    finally:
        root.chmod(0o755)
    assert_one_line_error(res, "evaluate", str(root), "Permission denied")


def test_cli_bugs_keep_their_traceback(tmp_path, monkeypatch, capsys):
    import harmonia.commands

    def boom(args):
        raise RuntimeError("a bug")

    monkeypatch.setattr(harmonia.commands, "cmd_info", boom)
    with pytest.raises(RuntimeError, match="a bug"):
        main(["info", str(MS)])


def test_error_line_is_one_line_and_keeps_a_dataloader_workers_own_message():
    from harmonia.cli import error_line
    from harmonia.data.loader import ShardReadError

    worker = ShardReadError("Caught ShardReadError in DataLoader worker process 0.\nOriginal Traceback (most "
                            "recent call last):\n  File \"x.py\", line 1, in f\nharmonia.data.loader.ShardReadError: "
                            "shard /s/a.tar: missing. Re-run `harmonia data shard`\n")
    assert error_line("harmonia pretrain", worker) == ("harmonia pretrain: error: shard /s/a.tar: missing. "
                                                       "Re-run `harmonia data shard`")
    e = FileNotFoundError(2, "No such file or directory", "/x/y.wav")
    assert error_line("harmonia encode", e) == "harmonia encode: error: /x/y.wav: No such file or directory"
    e = PermissionError(13, "Permission denied", "/data/.harmonia_cache")
    assert error_line("harmonia evaluate", e) == ("harmonia evaluate: error: /data/.harmonia_cache: Permission denied; "
                                                  "check its permissions or choose a writable location")
    assert error_line("harmonia x", ValueError("a\n  b")) == "harmonia x: error: a b"
    e = FileExistsError(17, "File exists", "/runs/out")
    assert error_line("harmonia evaluate", e).startswith("harmonia evaluate: error: /runs/out: File exists; "
                                                         "something is in the way")


def test_which_exceptions_are_user_errors():
    import errno

    from harmonia.cli import is_user_error
    from harmonia.io import CheckpointError

    for e in (CheckpointError("x"), ValueError("x"), FileNotFoundError("x"), PermissionError("x"),
              NotADirectoryError("x"), IsADirectoryError("x"), OSError(errno.EROFS, "Read-only file system"),
              OSError(errno.ENOSPC, "No space left on device")):
        assert is_user_error(e), e
    for e in (RuntimeError("x"), KeyError("x"), TypeError("x"), OSError(errno.EIO, "I/O error")):
        assert not is_user_error(e), e


def test_unreadable_beats_config_is_a_one_line_error(tmp_path, capsys):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("encoder_layers: [1, 2\n")
    rc = main(["encode", "--model", str(MS), "--beats-config", str(cfg), "--out", str(tmp_path / "o"),
               str(FIX / "audio" / "example.wav")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith(f"harmonia encode: error: --beats-config {cfg}")
