"""align_frames (hand-computed cases) and EnsembleEncoder on the tiny fixture checkpoints."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import harmonia
from harmonia import EnsembleEncoder, align_frames
from harmonia.ensemble import with_options
from harmonia.hub import save_harmonia, write_linked_ensemble

FIX = Path(__file__).parent / "fixtures"
BEATS_A = FIX / "beats" / "beats_ms_iter3_small.pt"
BEATS_B = FIX / "beats" / "openbeats_small_ssl.pt"
DASHENG = FIX / "dasheng" / "model_a.pt"
SR = 16000


def col(values) -> torch.Tensor:
    """[v0, v1, ...] -> (1, T, 1)."""
    return torch.tensor(values, dtype=torch.float32)[None, :, None]


# -------------------------------------------------------------------------------------------------
# align_frames


def test_upsample_by_two_hand_computed():
    x = col([0.0, 10.0, 20.0])
    # linear: p = (j + 0.5)/2 - 0.5 = -0.25, 0.25, 0.75, 1.25, 1.75, 2.25 -> clamp to [0, 2]
    assert align_frames(x, 6, "linear").flatten().tolist() == [0.0, 2.5, 7.5, 12.5, 17.5, 20.0]
    # nearest: floor((j + 0.5)/2) = 0, 0, 1, 1, 2, 2
    assert align_frames(x, 6, "nearest").flatten().tolist() == [0.0, 0.0, 10.0, 10.0, 20.0, 20.0]


def test_downsample_by_two_hand_computed():
    x = col([0.0, 1.0, 2.0, 3.0, 4.0, 5.0])
    # linear: p = (j + 0.5)*2 - 0.5 = 0.5, 2.5, 4.5 ; nearest: floor((j + 0.5)*2) = 1, 3, 5
    assert align_frames(x, 3, "linear").flatten().tolist() == [0.5, 2.5, 4.5]
    assert align_frames(x, 3, "nearest").flatten().tolist() == [1.0, 3.0, 5.0]


@pytest.mark.parametrize("mode", ["nearest", "linear"])
def test_equal_counts_is_exact_identity(mode):
    x = torch.randn(2, 37, 5)
    assert torch.equal(align_frames(x, 37, mode), x)


@pytest.mark.parametrize("mode", ["nearest", "linear"])
def test_single_frame_is_repeated(mode):
    x = torch.tensor([[[3.0, -1.0]]])
    out = align_frames(x, 5, mode)
    assert out.shape == (1, 5, 2)
    assert torch.equal(out, x.expand(1, 5, 2))
    assert torch.equal(align_frames(x, 1, mode), x)


def test_dasheng_250_to_beats_496_nearest_indices():
    x = torch.arange(250, dtype=torch.float32)[None, :, None]
    out = align_frames(x, 496, "nearest").flatten()
    # floor((j + 0.5) * 250 / 496): j=0 -> 0, 1 -> 0.756 -> 0, 2 -> 1.26 -> 1, 3 -> 1.76 -> 1, 495 -> 249.75 -> 249
    assert out[[0, 1, 2, 3, 495]].tolist() == [0.0, 0.0, 1.0, 1.0, 249.0]
    assert out.shape == (496,)


def test_padded_batch_uses_each_items_lengths():
    x = torch.tensor([[0.0, 10.0, 20.0, 30.0], [5.0, 7.0, 999.0, -999.0]])[..., None]  # item 2: 2 valid
    lengths, target = torch.tensor([4, 2]), torch.tensor([8, 4])
    lin = align_frames(x, 8, "linear", lengths, target)[..., 0]
    # item 1: p = (j+0.5)/2 - 0.5 clamped to [0, 3] ; item 2: a=2 -> b=4, p clamped to [0, 1], then zeros
    assert lin[0].tolist() == [0.0, 2.5, 7.5, 12.5, 17.5, 22.5, 27.5, 30.0]
    assert lin[1].tolist() == [5.0, 5.5, 6.5, 7.0, 0.0, 0.0, 0.0, 0.0]
    near = align_frames(x, 8, "nearest", lengths, target)[..., 0]
    assert near[1].tolist() == [5.0, 5.0, 7.0, 7.0, 0.0, 0.0, 0.0, 0.0]


@pytest.mark.parametrize("T_in,T_out", [(250, 496), (7, 3), (10, 10), (62, 250), (1, 4)])
def test_matches_torch_interpolate(T_in, T_out):
    """Independent implementation: F.interpolate with the same centre-aligned conventions."""
    x = torch.randn(2, T_in, 3, dtype=torch.float64)
    ref_lin = F.interpolate(x.transpose(1, 2), size=T_out, mode="linear", align_corners=False).transpose(1, 2)
    ref_near = F.interpolate(x.transpose(1, 2), size=T_out, mode="nearest-exact").transpose(1, 2)
    torch.testing.assert_close(align_frames(x, T_out, "linear"), ref_lin, rtol=0, atol=1e-12)
    assert torch.equal(align_frames(x, T_out, "nearest"), ref_near)


def test_align_frames_errors():
    x = torch.zeros(2, 4, 3)
    with pytest.raises(ValueError, match="mode='cubic'"):
        align_frames(x, 5, "cubic")
    with pytest.raises(ValueError, match=r"\(B, T, D\)"):
        align_frames(torch.zeros(4, 3), 5)
    with pytest.raises(ValueError, match=r"lengths must lie in \[1, 4\]"):
        align_frames(x, 5, lengths=torch.tensor([5, 1]))
    with pytest.raises(ValueError, match="target_lengths must have shape"):
        align_frames(x, 5, target_lengths=torch.tensor([5]))
    with pytest.raises(ValueError, match="num_frames=0"):
        align_frames(x, 0)


# -------------------------------------------------------------------------------------------------
# EnsembleEncoder


@pytest.fixture(scope="module")
def members():
    return [harmonia.load_encoder(p) for p in (BEATS_A, BEATS_B, DASHENG)]


@pytest.fixture(scope="module")
def wav10():
    g = torch.Generator().manual_seed(0)
    return torch.randn(1, 10 * SR, generator=g) * 0.1


@pytest.fixture(scope="module")
def wav4():
    """4 s: 192 BEATs tokens (1 + (64000 - 400) // 160 = 398 fbank frames -> 24 rows x 8), 100 Dasheng frames."""
    g = torch.Generator().manual_seed(2)
    return torch.randn(1, 4 * SR, generator=g) * 0.1


def test_paper_layout_10s_equals_hand_composition(members, wav10):
    a, b, d = members
    ens = EnsembleEncoder(members, align="nearest")
    assert (ens.output_dim, ens.hop_size_in_ms, ens.num_frames(10 * SR)) == (64 * 3, 20.0, 496)
    out = ens(wav10)
    fa, fb, fd = a(wav10), b(wav10), d(wav10)
    assert fa.shape == (1, 496, 64) and fd.shape == (1, 250, 64)
    idx = [math.floor((j + 0.5) * 250 / 496) for j in range(496)]  # nearest, by hand
    expected = torch.cat([fa, fb, fd[:, idx]], dim=-1)
    assert out.shape == (1, 496, 192)
    assert torch.equal(out, expected)
    assert [s.start for s in ens.member_slices] == [0, 64, 128]


def test_linear_alignment_equals_interpolation(members, wav4):
    ens = EnsembleEncoder(members, align="linear")
    fd = members[2](wav4)
    up = F.interpolate(fd.transpose(1, 2).double(), size=192, mode="linear", align_corners=False)
    torch.testing.assert_close(ens(wav4)[..., 128:].double(), up.transpose(1, 2), rtol=0, atol=1e-6)


def test_reference_member_sets_the_grid(members, wav4):
    ens = EnsembleEncoder(members, align="linear", reference=2)  # Dasheng's 40 ms grid: BEATs downsampled
    out = ens(wav4)
    assert out.shape == (1, 100, 192) and ens.hop_size_in_ms == 40.0
    assert torch.equal(out[..., 128:], members[2](wav4))


def test_batch_invariance(members):
    ens = EnsembleEncoder(members, align="linear")  # nearest takes the same per-item path (see above)
    g = torch.Generator().manual_seed(1)
    lengths = [4 * SR, 37_000, 9_000]
    wav = torch.randn(3, lengths[0], generator=g) * 0.1
    batch = ens.encode(wav, torch.tensor(lengths))
    for i, n in enumerate(lengths):
        alone = ens.encode(wav[i: i + 1, :n])
        assert int(batch.lengths[i]) == alone.frames.shape[1] == ens.num_frames(n)
        torch.testing.assert_close(batch.frames[i, : int(batch.lengths[i])], alone.frames[0], rtol=0, atol=1e-5)
        assert torch.count_nonzero(batch.frames[i, int(batch.lengths[i]):]) == 0


def test_fuse_mean_and_dimension_error(members, wav4):
    ens = EnsembleEncoder(members[:2], fuse="mean")
    assert ens.output_dim == 64
    torch.testing.assert_close(ens(wav4), (members[0](wav4) + members[1](wav4)) / 2, rtol=0, atol=1e-6)
    wide = with_options(members[0], layout="concat")  # 8 x 64 = 512 dims
    with pytest.raises(ValueError, match=r"fuse='mean' needs members of one output_dim, found \[512, 64\]"):
        EnsembleEncoder([wide, members[1]], fuse="mean")


def test_members_pick_their_own_layer(members, wav4):
    shallow = with_options(members[0], layer=1)
    ens = EnsembleEncoder([shallow, members[2]])
    direct = harmonia.load_encoder(BEATS_A, layer=1)(wav4)
    assert torch.equal(ens(wav4)[..., :64], direct)
    assert not torch.equal(direct, members[0](wav4))


def test_hidden_states_are_every_members_on_the_reference_grid(members, wav4):
    ens = EnsembleEncoder(members)
    out = ens.encode(wav4, output_hidden_states=True)
    counts = [len(m.encode(wav4, output_hidden_states=True).hidden_states) for m in members]
    assert len(out.hidden_states) == sum(counts)
    assert all(h.shape[:2] == (1, 192) for h in out.hidden_states)
    # values: the BEATs members' states as they are (same grid), Dasheng's resampled 100 -> 192 frames
    expected = [h for m in members[:2] for h in m.encode(wav4, output_hidden_states=True).hidden_states]
    expected += [align_frames(h, 192, "nearest")
                 for h in members[2].encode(wav4, output_hidden_states=True).hidden_states]
    for got, want in zip(out.hidden_states, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    assert not torch.equal(out.hidden_states[0], out.hidden_states[1])  # distinct layers, not one repeated


def test_constructor_errors(members):
    with pytest.raises(ValueError, match="at least one member"):
        EnsembleEncoder([])
    with pytest.raises(ValueError, match="reference=3"):
        EnsembleEncoder(members, reference=3)
    with pytest.raises(ValueError, match="align='cubic'"):
        EnsembleEncoder(members, align="cubic")
    with pytest.raises(TypeError, match="expected a harmonia AudioEncoder"):
        EnsembleEncoder([torch.nn.Linear(2, 2)])


# -------------------------------------------------------------------------------------------------
# our format, ad-hoc specs, CLI


def test_harmonia_format_round_trip(members, wav4, tmp_path):
    ens = EnsembleEncoder(members, align="linear", names=["a", "b", "d"])
    save_harmonia(ens, tmp_path / "ens")
    assert sorted(p.name for p in (tmp_path / "ens").iterdir()) == ["config.json", "model.safetensors"]
    back = harmonia.load_encoder(tmp_path / "ens")
    assert isinstance(back, EnsembleEncoder) and back.names == ["a", "b", "d"] and back.align == "linear"
    assert torch.equal(back(wav4), ens(wav4))
    nearest = harmonia.load_encoder(tmp_path / "ens", align="nearest")  # options override the stored ones
    assert nearest.align == "nearest"
    with pytest.warns(UserWarning, match="float16 on the CPU is very slow"):
        half = harmonia.load_encoder(tmp_path / "ens", dtype=torch.float16)
    # every weight matrix in fp16 (Dasheng keeps its mel BatchNorm in fp32 by design)
    assert {p.dtype for m in half.members for p in m.parameters() if p.ndim > 1} == {torch.float16}
    with pytest.raises(TypeError, match=r"no ensemble member takes option\(s\) \['layot'\]"):
        harmonia.load_encoder(tmp_path / "ens", layot="flat")


def test_linked_ensemble_directory(members, wav4, tmp_path):
    for name, m in zip("abd", members):
        save_harmonia(m, tmp_path / name)
    write_linked_ensemble(tmp_path, ["a", "b", "d"], align="linear")
    ens = harmonia.load_encoder(tmp_path)
    assert torch.equal(ens(wav4), EnsembleEncoder(members, align="linear")(wav4))


def test_adhoc_spec_with_per_member_layer(members, wav4):
    ens = harmonia.load_encoder(f"{BEATS_A}@1+{DASHENG}", align="linear")
    assert isinstance(ens, EnsembleEncoder) and ens.members[0].layer == 1 and ens.members[1].layer is None
    assert torch.equal(ens(wav4)[..., :64], harmonia.load_encoder(BEATS_A, layer=1)(wav4))
    layout = harmonia.load_encoder(f"{BEATS_A}+{DASHENG}", layout="mean")  # only BEATs takes `layout`
    assert layout.hop_size_in_ms == 160.0 and layout.num_frames(10 * SR) == 62
    with pytest.raises(ValueError, match="two or more sources"):
        harmonia.load_encoder(f"{BEATS_A}+")
    with pytest.raises(TypeError, match="no ensemble member takes"):
        harmonia.load_encoder(f"{BEATS_A}+{DASHENG}", layot="mean")


def test_cli_encode_and_convert_ensemble(tmp_path):
    from harmonia.audio import load_audio
    from harmonia.cli import main

    wav = FIX / "audio" / "example.wav"
    spec = f"{BEATS_A}+{BEATS_B}+{DASHENG}"
    assert main(["encode", "--model", spec, "--align", "linear", "--reference", "0", "--out", str(tmp_path / "o"),
                 str(wav)]) == 0
    frames = np.load(tmp_path / "o" / "example.npy")
    expected = EnsembleEncoder([harmonia.load_encoder(p) for p in (BEATS_A, BEATS_B, DASHENG)], align="linear")
    x = load_audio(wav)
    assert frames.shape == (expected.num_frames(x.shape[-1]), 192)
    np.testing.assert_allclose(frames, expected(x)[0].numpy(), rtol=0, atol=1e-6)
    assert main(["convert", spec, str(tmp_path / "conv")]) == 0
    assert main(["encode", "--model", str(tmp_path / "conv"), "--align", "linear", "--out", str(tmp_path / "o2"),
                 str(wav)]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "o2" / "example.npy"), frames)


def test_cli_info_of_an_ensemble_shows_every_member(tmp_path, capsys):
    from harmonia.cli import main

    ens = EnsembleEncoder([harmonia.load_encoder(BEATS_A, layout="mean"), harmonia.load_encoder(DASHENG, layer=2)],
                          names=["beats", "dasheng"])
    save_harmonia(ens, tmp_path / "ens")
    assert main(["info", str(tmp_path / "ens")]) == 0
    out = capsys.readouterr().out
    assert "member: beats (beats) layout=mean" in out and "member: dasheng (dasheng) layer=2" in out
