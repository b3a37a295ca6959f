"""`harmonia data shard` killed or interrupted for real (separate processes, real signals)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc")]

# Each decode takes 1 s, so that the run is still busy when the signal arrives.
SLOW_DECODE = ("import time, harmonia.data.shards as s\n"
               "_load = s.load_audio\n"
               "s.load_audio = lambda p: (time.sleep(1.0), _load(p))[1]\n")


def _cli(argv: list[str], prelude: str = "", **popen) -> subprocess.Popen:
    code = f"import sys\n{prelude}\nfrom harmonia.cli import main\nsys.exit(main(sys.argv[1:]))"
    # Ctrl-C must reach the command even when this test runs with SIGINT ignored (a backgrounded
    # or nohup'ed CI job): a process started with SIGINT ignored keeps ignoring it.
    return subprocess.Popen([sys.executable, "-c", code, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=_default_sigint, **popen)


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _manifest(tmp_path: Path, n: int = 6) -> Path:
    lines = []
    for i in range(n):
        f = tmp_path / f"f{i}.wav"
        sf.write(f, np.full(24000, 0.01 * (i + 1), np.float32), 16000)
        lines.append(json.dumps(dict(id=f"c/f{i}", path=str(f), duration=1.5, sample_rate=16000, channels=1,
                                     num_frames=24000, domain="sound", corpus="c")))
    path = tmp_path / "m.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _running(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status and "\nState:\tX" not in status


def _wait_for(test, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if test():
            return True
        time.sleep(0.05)
    return test()


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _shard_argv(manifest: Path, out: Path) -> list[str]:
    return ["data", "shard", "--quiet", str(manifest), "-o", str(out), "--shard-seconds", "1", "--workers", "2"]


def test_kill_9_of_shard_leaves_no_worker_behind_and_the_rerun_is_byte_identical(tmp_path):
    manifest = _manifest(tmp_path)
    run = tmp_path / "run"
    proc = _cli(_shard_argv(manifest, run), SLOW_DECODE)
    workers: list[int] = []
    try:
        assert _wait_for(lambda: len(_children(proc.pid)) == 2 and list(run.rglob("*.harmonia-tmp-*")), 300), \
            "the workers did not start"
        workers = _children(proc.pid)
        proc.kill()
        proc.wait()
        # Orphaned pool workers used to wait for work forever after their parent was killed.
        assert _wait_for(lambda: not any(_running(w) for w in workers), 10), "pool workers outlived their parent"
    finally:
        proc.kill()
        for w in workers:  # do not leak them when the test fails
            if _running(w):
                os.kill(w, signal.SIGKILL)
    rerun = _cli(_shard_argv(manifest, run))
    ref = _cli(_shard_argv(manifest, tmp_path / "ref"))
    assert rerun.wait(300) == 0 and ref.wait(300) == 0, rerun.stderr.read() + ref.stderr.read()
    assert _files(run) == _files(tmp_path / "ref")  # byte-identical, no temp file left


@pytest.mark.parametrize("sig, code, word, group", [
    (signal.SIGINT, 130, "interrupted", True),  # Ctrl-C in a terminal: the command and its pool workers
    (signal.SIGTERM, 143, "terminated", False),  # `kill PID`, a scheduler's time limit: the command only
])
def test_a_stopped_shard_run_exits_promptly_with_its_code_and_no_temp_file(tmp_path, sig, code, word, group):
    manifest = _manifest(tmp_path, n=12)
    run = tmp_path / "run"
    proc = _cli(_shard_argv(manifest, run), SLOW_DECODE, start_new_session=True)
    try:
        assert _wait_for(lambda: len(_children(proc.pid)) == 2 and list(run.rglob("*.harmonia-tmp-*")), 300), \
            "the workers did not start"
        workers = _children(proc.pid)
        t0 = time.monotonic()
        if group:
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)
        rc = proc.wait(60)
        elapsed = time.monotonic() - t0
        assert _wait_for(lambda: not any(_running(w) for w in workers), 10), "pool workers outlived their parent"
    finally:
        with contextlib.suppress(ProcessLookupError):  # whatever is left of its process group
            os.killpg(proc.pid, signal.SIGKILL)
    err = proc.stderr.read()
    assert rc == code and f"harmonia data shard: {word}" in err and "Traceback" not in err, err
    assert elapsed < 8, f"took {elapsed:.1f} s to stop: the queued shards were still written"
    assert not [p for p in run.rglob("*") if "harmonia-tmp" in p.name]
    assert not (run / "index.json").exists()
