from __future__ import annotations

import json

import pytest

from harmonia.data.manifest import ManifestError, Source, read_manifest, scan_sources
from harmonia.data.mixture import HoursScheduler, MixtureError, parse_ratio, plan_mixture
from harmonia.io import temp_name
from tests.data.conftest import POOL, sources


def test_scan_durations_failures_and_blacklist(pool_dir, tmp_path):
    srcs = [Source.parse(s) for s in sources(pool_dir)]
    res = scan_sources(srcs, workers=3, blacklist={"talk003", "songs/sub/songs001"}, progress=False)
    assert [p for p, _ in res.failures] == [str(pool_dir / "noise" / "broken.wav")]
    assert sorted(e.id for e in res.blacklisted) == ["songs/sub/songs001", "talk/sub/talk003"]
    by_corpus: dict[str, list] = {}
    for e in res.entries:
        by_corpus.setdefault(e.corpus, []).append(e)
    for corpus, (domain, n, sec, sr, ch) in POOL.items():
        got = by_corpus[corpus]
        assert len(got) == n - (1 if corpus in ("talk", "songs") else 0)
        assert all(e.domain == domain and e.sample_rate == sr and e.channels == ch for e in got)
        assert all(abs(e.duration - sec) < 1e-6 for e in got)
    # same result whatever the parallelism
    res1 = scan_sources(srcs, workers=1, progress=False)
    assert [e.id for e in res1.entries if e not in res.blacklisted] == [e.id for e in res.entries]
    assert len(res1.entries) == len(res.entries) + 2


def test_cli_manifest_writes_jsonl_and_failed_list(pool_dir, tmp_path, capsys):
    import argparse

    from harmonia.data.cli import add_parser

    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="cmd"))
    out = tmp_path / "m.jsonl"
    argv = ["data", "manifest", "--quiet", "-o", str(out), *sum((["--source", s] for s in sources(pool_dir)), [])]
    args = parser.parse_args(argv)
    assert args.func(args) == 1  # finished, but one file failed
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(lines) == sum(v[1] for v in POOL.values())
    assert set(lines[0]) >= {"path", "duration", "sample_rate", "channels", "domain", "corpus", "id"}
    assert "broken.wav" in (tmp_path / "m.jsonl.failed.tsv").read_text()
    assert "1 unreadable" in capsys.readouterr().err
    assert len(read_manifest(out)) == len(lines)
    args = parser.parse_args([*argv, "--allow-partial"])
    assert args.func(args) == 0 and "broken.wav" in capsys.readouterr().err  # still listed


def test_bad_source_and_manifest_errors(tmp_path):
    with pytest.raises(ManifestError, match="DOMAIN/CORPUS=DIR"):
        Source.parse("/data/cv")
    with pytest.raises(ManifestError, match="not a directory"):
        scan_sources([Source("speech", "x", tmp_path / "missing")], progress=False)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a"}\n')
    with pytest.raises(ManifestError, match="bad.jsonl:1"):
        read_manifest(bad)


def test_parse_ratio():
    assert parse_ratio("speech-heavy") == {"speech": 0.7, "music": 0.15, "sound": 0.15}
    assert parse_ratio("40:30:30") == pytest.approx({"speech": 0.4, "music": 0.3, "sound": 0.3})
    assert parse_ratio("speech=0.5,sound=0.5") == {"speech": 0.5, "sound": 0.5}
    with pytest.raises(MixtureError, match="sum to 90"):
        parse_ratio("40:30:20")
    with pytest.raises(MixtureError, match="expected 3 numbers"):
        parse_ratio("50:50")


def test_plan_mixture_within_domain_by_hours_and_weights():
    hours = {"speech/a": 30.0, "speech/b": 10.0, "music/m": 5.0, "sound/s": 1.0, "sound/t": 3.0}
    plan = plan_mixture(hours, "70:15:15")
    assert plan.target["speech/a"] == pytest.approx(0.7 * 0.75)
    assert plan.target["speech/b"] == pytest.approx(0.7 * 0.25)
    assert plan.target["music/m"] == pytest.approx(0.15)
    assert plan.target["sound/t"] == pytest.approx(0.15 * 0.75)
    assert sum(plan.target.values()) == pytest.approx(1.0)
    # weight b by 3: a and b then count equally (30 vs 10*3)
    plan = plan_mixture(hours, "balanced", {"b": 3.0})
    assert plan.target["speech/a"] == pytest.approx(plan.target["speech/b"]) == pytest.approx(0.2)
    with pytest.raises(MixtureError, match="no data in the pool"):
        plan_mixture({"speech/a": 1.0, "sound/s": 1.0}, "balanced")
    with pytest.raises(MixtureError, match="not in the pool"):
        plan_mixture(hours, "balanced", {"nope": 2.0})


def test_hours_scheduler_matches_hours_not_counts():
    # streams whose segments have very different lengths: a count-based sampler would be far off
    seg = {"speech/a": 1.0, "music/m": 9.0, "sound/s": 3.0}
    target = {"speech/a": 0.7, "music/m": 0.15, "sound/s": 0.15}
    sched = HoursScheduler(target)
    for _ in range(2000):
        s = sched.next_stream()
        sched.add(s, seg[s])
    total = sum(sched.seconds.values())
    for s, t in target.items():
        assert abs(sched.seconds[s] / total - t) < 0.005


def test_manifest_exit_code_and_failed_list_follow_the_current_run(tmp_path, capsys):
    import numpy as np
    import soundfile as sf

    from harmonia.cli import main

    src = tmp_path / "src"
    src.mkdir()
    sf.write(src / "a.wav", np.zeros(16000, np.float32), 16000)
    (src / "b.wav").write_bytes(b"RIFF junk")
    out = tmp_path / "m.jsonl"
    argv = ["data", "manifest", "--quiet", "--source", f"sound/x={src}", "-o", str(out)]
    assert main(argv) == 1
    err = capsys.readouterr().err
    *_, last_failure, hint = err.rstrip().splitlines()  # the summary at the end, then the exit-status hint
    assert last_failure.strip().startswith(str(src / "b.wav")) and "--allow-partial" in hint
    sf.write(src / "b.wav", np.zeros(8000, np.float32), 16000)  # fixed
    assert main(argv) == 0
    assert len(read_manifest(out)) == 2 and not (tmp_path / "m.jsonl.failed.tsv").exists()


def _manifest_lines(tmp_path, n=3):
    from harmonia.data.manifest import Entry

    return [Entry(id=f"c/f{i}", path=str(tmp_path / f"f{i}.wav"), duration=3600.0, sample_rate=16000, channels=1,
                  num_frames=3600 * 16000, domain="speech", corpus="c").to_json() for i in range(n)]


def test_exact_duplicate_manifest_lines_are_dropped_with_a_warning_naming_them(tmp_path, capsys):
    from harmonia.cli import main
    from harmonia.data.manifest import ManifestWarning

    lines = _manifest_lines(tmp_path)
    path = tmp_path / "m.jsonl"
    path.write_text("\n".join(lines + [lines[0], lines[2]]) + "\n")  # two manifests concatenated
    with pytest.warns(ManifestWarning, match=r"dropped 2 duplicate line\(s\): 4 \(= line 1\), 5 \(= line 3\)"):
        entries = read_manifest(path)
    assert [e.id for e in entries] == ["c/f0", "c/f1", "c/f2"]
    with pytest.warns(ManifestWarning):
        assert main(["data", "mix", str(path), "--ratio", "speech=1"]) == 0
    row = [r for r in capsys.readouterr().out.splitlines() if r.startswith("speech/c")][0]
    assert float(row.split()[1]) == pytest.approx(3.0)  # 3 files of 1 h, not 5


def test_conflicting_duplicate_manifest_lines_are_refused_naming_both_lines(tmp_path):
    lines = _manifest_lines(tmp_path)
    other = json.loads(lines[1])
    other["path"] = str(tmp_path / "elsewhere.wav")  # same id, another file
    path = tmp_path / "m.jsonl"
    path.write_text("\n".join(lines + [json.dumps(other)]) + "\n")
    with pytest.raises(ManifestError, match=r"duplicate id 'c/f1' \(.*m.jsonl:2 and .*m.jsonl:4\)"):
        read_manifest(path)
    other = json.loads(lines[1])
    other["id"] = "c/renamed"  # same file under two ids
    path.write_text("\n".join(lines + [json.dumps(other)]) + "\n")
    with pytest.raises(ManifestError, match=r"duplicate path .*f1.wav.*m.jsonl:2 and .*m.jsonl:4"):
        read_manifest(path)


@pytest.mark.parametrize("weight", ["sp=nan", "sp=inf", "sp=-1", "sp=", "=2", "sp"])
def test_mix_refuses_bad_corpus_weights(tmp_path, capsys, weight):
    from harmonia.cli import main

    path = tmp_path / "m.jsonl"
    path.write_text("\n".join(_manifest_lines(tmp_path)) + "\n")
    with pytest.raises(SystemExit) as exc:
        main(["data", "mix", str(path), "--weight", weight, "-o", str(tmp_path / "plan.json")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--weight" in err and ("finite number >= 0" in err or "CORPUS=NUMBER" in err)
    assert not (tmp_path / "plan.json").exists()


def test_plan_mixture_weight_rules():
    hours = {"speech/a": 3.0, "speech/b": 1.0, "music/m": 1.0}
    for bad in (float("nan"), float("inf"), -1.0):
        with pytest.raises(MixtureError, match="finite number >= 0"):
            plan_mixture(hours, "speech=0.5,music=0.5", {"a": bad})
    plan = plan_mixture(hours, "speech=0.5,music=0.5", {"a": 0.0})  # 0 leaves a corpus out
    assert "speech/a" not in plan.target and plan.target["speech/b"] == pytest.approx(0.5)
    with pytest.raises(MixtureError, match="every corpus in it has weight 0") as exc:
        plan_mixture(hours, "speech=0.5,music=0.5", {"a": 0.0, "b": 0.0})
    assert "no data" not in str(exc.value)


def test_manifest_write_is_atomic_and_cleans_temps_of_a_dead_writer(tmp_path, monkeypatch):
    import errno
    import subprocess
    import sys

    import numpy as np
    import soundfile as sf

    import harmonia.io
    from harmonia.cli import main

    src = tmp_path / "src"
    src.mkdir()
    sf.write(src / "a.wav", np.zeros(16000, np.float32), 16000)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True).stdout.strip()
    stale = temp_name(out_dir / "m.jsonl", pid=dead)
    stale.write_text("half a manifest")
    argv = ["data", "manifest", "--quiet", "--source", f"sound/x={src}", "-o", str(out_dir / "m.jsonl")]

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(harmonia.io.os, "fsync", no_space)
    assert main(argv) == 2  # one error line, nothing written
    assert list(out_dir.iterdir()) == []  # the stale temp removed, the new one deleted on failure
    monkeypatch.undo()
    assert main(argv) == 0 and len(read_manifest(out_dir / "m.jsonl")) == 1
