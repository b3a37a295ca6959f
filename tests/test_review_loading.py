"""Crafted and malformed inputs to the loaders (safetensors headers, config.json values, linked
ensembles): each is refused with one CheckpointError naming the file and the field."""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
from pathlib import Path

import pytest
import torch

import harmonia.io as harmonia_io
from harmonia.hub import load_encoder, save_harmonia, write_linked_ensemble
from harmonia.io import (
    CheckpointError,
    read_safetensors,
    remove_stale_temps,
    safetensors_metadata,
    torch_load,
)
from harmonia.models.beats import BeatsConfig


def _raw_safetensors(path, header: bytes | dict, data: bytes):
    h = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(h)) + h + data)
    return path


F32x2 = {"dtype": "F32", "shape": [2]}


@pytest.mark.parametrize("header, data, complaint", [
    # two names sharing the same bytes
    ({"a": {**F32x2, "data_offsets": [0, 8]}, "b": {**F32x2, "data_offsets": [0, 8]}}, b"\0" * 8, "overlap"),
    # partial overlap
    ({"a": {**F32x2, "data_offsets": [0, 8]}, "b": {**F32x2, "data_offsets": [4, 12]}}, b"\0" * 12, "overlap"),
    # a gap before the first tensor
    ({"a": {**F32x2, "data_offsets": [4, 12]}}, b"\0" * 12, "gap"),
    # bytes after the last tensor
    ({"a": {**F32x2, "data_offsets": [0, 8]}}, b"\0" * 12, "the tensors end at byte"),
    # the same name twice (JSON would silently keep the last one)
    (b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, '
     b'"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}', b"\0" * 8, "more than once"),
    # non-integer shape and offsets
    ({"a": {"dtype": "F32", "shape": [1.7], "data_offsets": [0, 4]}}, b"\0" * 4, "whole numbers"),
    ({"a": {"dtype": "F32", "shape": [True], "data_offsets": [0, 4]}}, b"\0" * 4, "whole numbers"),
    ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4, 8]}}, b"\0" * 4, "whole numbers"),
    # metadata that is not an object of strings
    ({"__metadata__": [1, 2], "a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4,
     "__metadata__"),
    ({"__metadata__": {"k": 1}, "a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4,
     "__metadata__"),
])
def test_crafted_safetensors_headers_are_refused(tmp_path, header, data, complaint):
    path = _raw_safetensors(tmp_path / "x.safetensors", header, data)
    for read in (read_safetensors, safetensors_metadata):
        with pytest.raises(CheckpointError, match=complaint) as e:
            read(path)
        assert str(path) in str(e.value)


def test_a_well_formed_handmade_file_still_reads(tmp_path):
    data = struct.pack("<2f", 1.5, -2.0) + struct.pack("<i", 7)
    path = _raw_safetensors(tmp_path / "ok.safetensors", {
        "__metadata__": {"k": "v"}, "b": {"dtype": "I32", "shape": [1], "data_offsets": [8, 12]},
        "a": {**F32x2, "data_offsets": [0, 8]}, "empty": {"dtype": "F32", "shape": [0], "data_offsets": [8, 8]}}, data)
    t = read_safetensors(path)
    assert t["a"].tolist() == [1.5, -2.0] and t["b"].tolist() == [7] and t["empty"].numel() == 0
    assert safetensors_metadata(path) == {"k": "v"}
    assert torch.equal(read_safetensors(path, "bf16")["a"], t["a"])


# -------------------------------------------------------------------------------------------------
# linked ensembles


DASHENG = Path(__file__).parent / "fixtures" / "dasheng" / "model_a.pt"
BEATS = Path(__file__).parent / "fixtures" / "beats" / "beats_ms_iter3_small.pt"


@pytest.mark.parametrize("links", [
    {"self": ["."]},  # an ensemble listing its own folder
    {"a": ["../b"], "b": ["../a"]},  # two ensembles listing each other
    {"a": [str(DASHENG), "../b"], "b": ["../c"], "c": ["../a"]},  # a longer loop behind a real member
])
def test_a_linked_ensemble_that_contains_itself_is_one_clear_error(tmp_path, links):
    # before: RecursionError (maximum recursion depth exceeded), no file named
    for name, members in links.items():
        write_linked_ensemble(tmp_path / name, members)
    first = tmp_path / next(iter(links))
    with pytest.raises(CheckpointError, match="contains itself") as e:
        load_encoder(first)
    assert str(first.resolve()) in str(e.value)


def test_one_member_linked_twice_is_not_a_loop(tmp_path):
    write_linked_ensemble(tmp_path / "m", [str(DASHENG)])
    write_linked_ensemble(tmp_path / "e", ["../m", "../m"])
    enc = load_encoder(tmp_path / "e")
    assert len(enc.members) == 2


# -------------------------------------------------------------------------------------------------
# config.json values


@pytest.fixture(scope="module")
def harmonia_dasheng(tmp_path_factory):
    out = tmp_path_factory.mktemp("h")
    save_harmonia(load_encoder(DASHENG), out)
    return out


def _with_model_field(src, dst, field, value):
    shutil.copytree(src, dst)
    config = json.loads((dst / "config.json").read_text())
    config["model"][field] = value
    (dst / "config.json").write_text(json.dumps(config))
    return dst


@pytest.mark.parametrize("field, value, complaint", [
    ("depth", 100_000, "depth=100000 but the weights hold 3 layers"),  # before: minutes building 100000 blocks
    ("embed_dim", 10**9, "cannot build"),  # before: raw RuntimeError (storage size overflowed)
    ("patch_size", [64, 0], "patch_size"),  # before: ZeroDivisionError
    ("mlp_ratio", float("nan"), "mlp_ratio"),  # before: "cannot convert float NaN to integer"
    ("top_db", float("nan"), "top_db"),  # before: accepted, NaN embeddings
    ("top_db", -5.0, "top_db"),
    ("norm_eps", -1.0, "norm_eps"),
    ("bn_eps", float("inf"), "bn_eps"),
])
def test_absurd_dasheng_config_values_are_refused_naming_the_file(harmonia_dasheng, tmp_path, field, value, complaint):
    folder = _with_model_field(harmonia_dasheng, tmp_path / "m", field, value)
    with pytest.raises(CheckpointError, match=re.escape(complaint)) as e:
        load_encoder(folder)
    assert str(folder / "config.json") in str(e.value)


@pytest.mark.parametrize("field, value", [
    ("encoder_attention_heads", 0), ("conv_pos_groups", 0),  # before: ZeroDivisionError
    ("embed_dim", 0), ("encoder_ffn_embed_dim", -1), ("conv_pos", 0),  # before: accepted
    ("fbank_mean", float("nan")), ("fbank_std", float("inf")),  # before: accepted, NaN/zero features
])
def test_absurd_beats_config_values_are_a_value_error_naming_the_field(field, value):
    with pytest.raises(ValueError, match=f"BeatsConfig.{field}="):
        BeatsConfig(**{field: value})


def test_a_beats_config_json_with_more_layers_than_its_weights_is_refused_before_building(tmp_path):
    # before: about a minute building 100000 layers on the meta device, then a 100000-key error
    save_harmonia(load_encoder(BEATS), tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    config["config"]["encoder_layers"] = 100_000
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="encoder_layers=100000 but the weights hold 3 layers") as e:
        load_encoder(tmp_path / "m")
    assert str(tmp_path / "m" / "config.json") in str(e.value)


@pytest.mark.parametrize("content, complaint", [
    ("[]", "expected a JSON object, found list"), ("null", "expected a JSON object, found NoneType"),
    ('"x"', "expected a JSON object, found str"), ("{", "cannot read as JSON"), (b"\xff\xfe", "cannot read as JSON"),
])
def test_a_damaged_config_json_is_named_as_such(harmonia_dasheng, tmp_path, content, complaint):
    # before: "not a known checkpoint layout", which sends the user looking at the weights
    folder = tmp_path / "m"
    shutil.copytree(harmonia_dasheng, folder)
    cfg = folder / "config.json"
    cfg.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(CheckpointError, match=complaint) as e:
        load_encoder(folder)
    assert str(cfg) in str(e.value)


DEEP = "[" * 100_000 + "]" * 100_000  # valid JSON nesting that makes the json module raise RecursionError


def test_a_json_nesting_bomb_in_config_json_is_a_checkpoint_error(harmonia_dasheng, tmp_path):
    folder = tmp_path / "m"
    shutil.copytree(harmonia_dasheng, folder)
    (folder / "config.json").write_text(DEEP)
    with pytest.raises(CheckpointError, match="cannot read as JSON") as e:  # before: RecursionError
        load_encoder(folder)
    assert str(folder / "config.json") in str(e.value)


def test_a_json_nesting_bomb_in_a_safetensors_header_is_a_checkpoint_error(tmp_path):
    path = _raw_safetensors(tmp_path / "x.safetensors", DEEP.encode(), b"")
    with pytest.raises(CheckpointError, match="header is not JSON") as e:  # before: RecursionError
        read_safetensors(path)
    assert str(path) in str(e.value)


def test_an_unreadable_config_json_says_so(harmonia_dasheng, tmp_path, monkeypatch):
    # (simulated: the tests run as root, who may read anything) before: "cannot read as JSON ...
    # write it again", which sends the user to rewrite a file they only may not read
    folder = tmp_path / "m"
    shutil.copytree(harmonia_dasheng, folder)
    real = Path.read_bytes

    def denied(self):
        if self.name == "config.json":
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", denied)
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: denied(self).decode())
    with pytest.raises(CheckpointError, match="cannot read it \\(Permission denied\\); check that it is a file"):
        load_encoder(folder)


# -------------------------------------------------------------------------------------------------
# stale temp files


def _temp_name_of_pid(target: Path, pid: int) -> Path:
    """A temp name exactly as atomic_path makes it, with another writer's pid."""
    make = getattr(harmonia_io, "temp_name", None) or harmonia_io._temp_name
    head, _, tail = make(target).name.rpartition(f"-{os.getpid()}-")
    return target.with_name(f"{head}-{pid}-{tail}")


def test_temp_names_with_impossible_pids_are_removed_not_a_crash(tmp_path):
    # before: OverflowError from os.kill (a file planted in a shared cache stopped every evaluation)
    # and pid 0 (os.kill(0, 0) signals the own process group) counted as a live writer
    planted = [_temp_name_of_pid(tmp_path / "a", 99999999999999999999), _temp_name_of_pid(tmp_path / "b", 0)]
    for p in planted:
        p.write_text("x")
    keep = _temp_name_of_pid(tmp_path / "c", os.getpid())  # our own, still being written
    keep.write_text("x")
    assert sorted(remove_stale_temps(tmp_path)) == sorted(planted)
    assert [p.name for p in tmp_path.iterdir()] == [keep.name]


# -------------------------------------------------------------------------------------------------
# crafted torch checkpoints (weights_only=True loads them; the values are still anything)


def _beats_ckpt():
    return torch.load(BEATS, weights_only=True)


def _dasheng_ckpt():
    return torch.load(DASHENG, weights_only=True)


def _first_key(d):
    return next(iter(d))


@pytest.mark.parametrize("make, complaint", [
    # non-tensor values: before, AttributeError "'int' object has no attribute 'shape'"
    (lambda: {**_beats_ckpt(), "model": {k: 1 for k in _beats_ckpt()["model"]}}, "not named tensors"),
    (lambda: {**_dasheng_ckpt(), "model": {k: 1 for k in _dasheng_ckpt()["model"]}}, "not named tensors"),
    # an integer tensor where a float one belongs: before, torch's raw RuntimeError from load_state_dict
    (lambda: (lambda c: {**c, "model": {**c["model"], _first_key(c["model"]): c["model"][_first_key(c["model"])].long()}})(
        _beats_ckpt()), "dtype mismatches"),
    # a cfg probability out of range: before, torch's ValueError from nn.Dropout, no file named
    (lambda: (lambda c: {**c, "cfg": {**c["cfg"], "dropout": 5.0}})(_beats_ckpt()), "BeatsConfig.dropout=5.0"),
])
def test_crafted_torch_checkpoints_are_one_checkpoint_error_naming_the_file(tmp_path, make, complaint):
    path = tmp_path / "crafted.pt"
    torch.save(make(), path)
    with pytest.raises(CheckpointError, match=complaint) as e:
        load_encoder(path)
    assert str(path) in str(e.value)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), 0.0, -1.0])
def test_a_non_finite_beats_chunk_length_names_the_option(value):
    # before (NaN): "cannot convert float NaN to integer", no option named
    with pytest.raises(ValueError, match=f"chunk_seconds={value}: must be a finite number"):
        load_encoder(BEATS, chunk_seconds=value)


@pytest.mark.parametrize("reader", [read_safetensors, safetensors_metadata, torch_load])
def test_a_pipe_given_as_a_checkpoint_is_named_as_not_a_file(tmp_path, reader):
    # before: "no such ... file" for a path that exists, and safetensors_metadata blocked forever on the pipe
    fifo = tmp_path / "weights.pt"
    os.mkfifo(fifo)
    with pytest.raises(CheckpointError, match="not a regular file") as e:
        reader(fifo)
    assert str(fifo) in str(e.value)
    with pytest.raises(CheckpointError, match="no such"):
        reader(tmp_path / "absent.pt")
