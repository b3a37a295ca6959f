"""harmonia.io: every corrupt safetensors file is one CheckpointError naming the file; wrong-shape
state dicts are one error listing keys and shapes; config types; the dtype parser; atomic writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from harmonia import load_encoder
from harmonia.io import (
    CheckpointError,
    atomic_path,
    atomic_write,
    check_type,
    parse_dtype,
    read_safetensors,
    remove_stale_temps,
    safetensors_metadata,
    temp_name,
    torch_load,
    write_safetensors,
)

FIX = Path(__file__).parent / "fixtures"
MS = FIX / "beats" / "beats_ms_iter3_small.pt"


# -------------------------------------------------------------------------------------------------
# the safetensors reader


def _header_file(path: Path, header: dict, data: bytes) -> Path:
    raw = json.dumps(header).encode()
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + data)
    return path


@pytest.fixture
def good(tmp_path) -> Path:
    path = tmp_path / "good.safetensors"
    write_safetensors({"a": torch.arange(12, dtype=torch.float32).reshape(3, 4), "b": torch.ones(5)}, path)
    return path


def _truncated(p: Path) -> None:
    p.write_bytes(p.read_bytes()[:-7])


def _random(p: Path) -> None:
    p.write_bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0),
                                dtype=torch.uint8).numpy().tobytes())


def _empty(p: Path) -> None:
    p.write_bytes(b"")


def _huge_header(p: Path) -> None:
    p.write_bytes((2**60).to_bytes(8, "little") + p.read_bytes()[8:])


def _bad_dtype(p: Path) -> None:
    _header_file(p, {"a": {"dtype": "F33", "shape": [2], "data_offsets": [0, 8]}}, bytes(8))


def _beyond(p: Path) -> None:
    _header_file(p, {"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, bytes(8))


def _shape_mismatch(p: Path) -> None:
    _header_file(p, {"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, bytes(8))


def _not_json(p: Path) -> None:
    p.write_bytes((4).to_bytes(8, "little") + b"{{{{" + bytes(8))


def _json_list(p: Path) -> None:
    p.write_bytes((2).to_bytes(8, "little") + b"[]")


@pytest.mark.parametrize("corrupt", [_truncated, _random, _empty, _huge_header, _bad_dtype, _beyond,
                                     _shape_mismatch, _not_json, _json_list])
@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
def test_corrupt_safetensors_is_one_checkpoint_error_naming_the_file(good, corrupt, dtype):
    corrupt(good)
    with pytest.raises(CheckpointError, match="good.safetensors: not a valid safetensors file"):
        read_safetensors(good, dtype)


def test_corrupt_weights_of_a_harmonia_folder_name_the_file(tmp_path):
    from harmonia.hub import save_harmonia

    out = save_harmonia(load_encoder(MS), tmp_path / "m")
    _truncated(out / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"m/model.safetensors: not a valid safetensors file"):
        load_encoder(out)


def test_reader_round_trip_and_dtype_conversion(good):
    state = read_safetensors(good)
    assert torch.equal(state["a"], torch.arange(12, dtype=torch.float32).reshape(3, 4))
    assert torch.equal(state["b"], torch.ones(5))
    bf = read_safetensors(good, "bf16")
    assert bf["a"].dtype == torch.bfloat16 and bf["b"].dtype == torch.float32  # vectors keep their dtype
    with pytest.raises(CheckpointError, match="missing.safetensors: no such safetensors file"):
        read_safetensors(good.parent / "missing.safetensors")


def test_metadata_reader(tmp_path, good):
    path = tmp_path / "meta.safetensors"
    write_safetensors({"x": torch.zeros(2)}, path, metadata={"format": "harmonia-encoder"})
    assert safetensors_metadata(path) == {"format": "harmonia-encoder"}
    _huge_header(good)
    with pytest.raises(CheckpointError, match="good.safetensors"):
        safetensors_metadata(good)


# -------------------------------------------------------------------------------------------------
# wrong-shape state dicts


def test_beats_wrong_shape_is_one_checkpoint_error_with_keys_and_shapes(tmp_path):
    ck = torch_load(MS)
    state = dict(ck["model"])
    key = "encoder.layers.1.fc2.bias"
    state[key] = torch.zeros(state[key].shape[0] + 1)
    del state["encoder.layers.0.fc1.bias"]
    torch.save({"cfg": ck["cfg"], "model": state}, tmp_path / "wrong.pt")
    with pytest.raises(CheckpointError) as err:
        load_encoder(tmp_path / "wrong.pt")
    msg = str(err.value)
    n = ck["model"][key].shape[0]
    assert "wrong.pt" in msg and f"{key}: ({n + 1},) vs ({n},)" in msg
    assert "missing keys (1): ['encoder.layers.0.fc1.bias']" in msg


def test_wrong_shape_in_harmonia_format_too(tmp_path):
    from harmonia.hub import save_harmonia

    out = save_harmonia(load_encoder(MS), tmp_path / "m")
    state = {k: v.clone() for k, v in read_safetensors(out / "model.safetensors").items()}
    state["layer_norm.weight"] = torch.ones(3)
    write_safetensors(state, out / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"layer_norm.weight: \(3,\) vs"):
        load_encoder(out)


# -------------------------------------------------------------------------------------------------
# config value types and dtypes


@pytest.mark.parametrize("value, hint, ok", [
    (True, bool, True), ("false", bool, False), (0, bool, False), (3, int, True), (True, int, False),
    (3.0, int, False), (3, float, True), (2.5, float, True), (False, float, False), ("x", str, True),
    (None, int | None, True), ("1", int | None, False), ([64, 4], tuple[int, int], True),
    ((64, 4, 1), tuple[int, int], False), (["64", 4], tuple[int, int], False), ({"a": 1}, dict, True),
    ([], dict, False), (["a"], list[str], True), ([1], list[str], False), ("ab", list[str] | None, False),
])
def test_check_type(value, hint, ok):
    if ok:
        check_type("field", value, hint)
    else:
        with pytest.raises(ValueError, match=r"^field: expected .*, found "):
            check_type("field", value, hint)


def test_check_type_message_and_error_class():
    with pytest.raises(CheckpointError, match=r"^cfg.deep_norm: expected bool, found str 'false' \(write true/false"):
        check_type("cfg.deep_norm", "false", bool, CheckpointError)


@pytest.mark.parametrize("spelling", ["bf16", "bfloat16", "BF16", " torch.bfloat16", torch.bfloat16])
def test_parse_dtype_spellings(spelling):
    assert parse_dtype(spelling) is torch.bfloat16


def test_parse_dtype_rejects_unknown():
    assert parse_dtype(None) is None
    for bad in ("int8", "bf17", 16):
        with pytest.raises(ValueError, match="unknown dtype"):
            parse_dtype(bad)


# -------------------------------------------------------------------------------------------------
# atomic writes


def test_atomic_write_failure_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "out.json"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_write(target) as f:
            f.write("half")
            raise RuntimeError("disk full")
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["out.json"]
    with atomic_write(target) as f:
        f.write("new")
    assert target.read_text() == "new" and os.listdir(tmp_path) == ["out.json"]


def test_atomic_path_is_unique_per_call(tmp_path):
    with atomic_path(tmp_path / "x") as a, atomic_path(tmp_path / "x") as b:
        assert a != b and a.parent == b.parent == tmp_path
        a.write_text("a")
        b.write_text("b")
    # the inner writer finishes first; the last rename wins, and no temp file is left
    assert (tmp_path / "x").read_text() == "a" and os.listdir(tmp_path) == ["x"]


def test_remove_stale_temps_removes_only_dead_writers(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    stale = temp_name(tmp_path / "x.npy", pid=dead_pid)
    live = temp_name(tmp_path / "y.npy", pid=os.getppid())
    mine = temp_name(tmp_path / "z.npy")
    other = tmp_path / "keep.npy"
    for p in (stale, live, mine, other):
        p.write_text("")
    assert remove_stale_temps(tmp_path) == [stale]
    assert sorted(os.listdir(tmp_path)) == sorted(p.name for p in (live, mine, other))


def test_temp_name_of_a_maximal_target_name_fits_one_path_component(tmp_path):
    target = tmp_path / ("é" * 120 + ".npy")  # 244 bytes: a valid name that a naive temp suffix overflows
    with atomic_write(target, "wb") as f:
        f.write(b"x")
    assert target.read_bytes() == b"x" and os.listdir(tmp_path) == [target.name]
    assert len(temp_name(target).name.encode()) <= 255


def test_remove_stale_temps_leaves_user_files_that_only_look_like_temps(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = temp_name(tmp_path / "x.npy", pid=int(dead.stdout))
    lookalikes = [tmp_path / f"results.harmonia-tmp-{int(dead.stdout)}-final.npy",  # a user's finished output
                  tmp_path / f".notes.harmonia-tmp-{int(dead.stdout)}-abcd1234"]    # old shape, no host tag
    for p in (stale, *lookalikes):
        p.write_text("")
    assert remove_stale_temps(tmp_path) == [stale]
    assert all(p.exists() for p in lookalikes)


def test_remove_stale_temps_keeps_another_hosts_fresh_temp(tmp_path):
    theirs = tmp_path / ".x.npy.harmonia-tmp-000000-1-abcd1234"  # another host's live writer (pid 1 there)
    theirs.write_text("")
    assert remove_stale_temps(tmp_path) == [] and theirs.exists()


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="zombies are read from /proc (Linux)")
def test_temp_of_a_killed_writer_left_a_zombie_is_stale(tmp_path):
    # A killed worker whose parent never reaps it stays a zombie (e.g. an orphan in a container whose
    # init does not wait): it still "exists" for kill(pid, 0), yet will never finish its file.
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 30
    while Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[-1].split()[0] != "Z":
        assert time.monotonic() < deadline
        time.sleep(0.01)
    try:
        stale = temp_name(tmp_path / "x.npy", pid=child.pid)
        stale.write_text("")
        assert remove_stale_temps(tmp_path) == [stale]
    finally:
        child.wait()
