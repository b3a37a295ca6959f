"""Crafted and malformed inputs to the loaders (safetensors headers, config.json values, linked
ensembles): each is refused with one CheckpointError naming the file and the field."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch

from harmonia.hub import load_encoder, write_linked_ensemble
from harmonia.io import CheckpointError, read_safetensors, safetensors_metadata


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
