"""Learned fusion: the stacked-states encoder, the two fusion modules against hand computations, and
fusion trained inside the probe on the training split only."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import harmonia
from harmonia import EnsembleEncoder
from harmonia.fusion import (
    GatedFusion,
    LayerWeightedFusion,
    StackedStatesEncoder,
    StateLayout,
    describe,
    make_fusion,
    mean_description,
    select_states,
    weights_chart,
)

FIX = Path(__file__).parent / "fixtures"
BEATS = FIX / "beats" / "beats_ms_iter3_small.pt"
DASHENG = FIX / "dasheng" / "model_a.pt"


def layout2() -> StateLayout:
    """Two members: 3 states of 4 features and 2 states of 2 features, after a 5-feature final block."""
    return StateLayout(("a", "b"), (3, 2), (4, 2), final_dim=5)


def stacked(final, a_states, b_states) -> torch.Tensor:
    return torch.cat([final, *a_states, *b_states], dim=-1)


@pytest.fixture(scope="module")
def members():
    return [harmonia.load_encoder(BEATS), harmonia.load_encoder(DASHENG)]


@pytest.fixture(scope="module")
def wav():
    return torch.randn(2, 16000, generator=torch.Generator().manual_seed(0)) * 0.1


# -------------------------------------------------------------------------------------------------
# layout and the stacked-states encoder


def test_layout_splits_members_state_by_state():
    g = torch.Generator().manual_seed(1)
    final, a, b = torch.randn(7, 5, generator=g), torch.randn(3, 7, 4, generator=g), torch.randn(2, 7, 2, generator=g)
    x = stacked(final, a, b)
    lay = layout2()
    assert lay.total_dim == 5 + 12 + 4 == x.shape[-1]
    assert torch.equal(lay.final(x), final)
    sa, sb = lay.member_states(x)
    assert sa.shape == (7, 3, 4) and sb.shape == (7, 2, 2)
    assert torch.equal(sa[:, 1], a[1]) and torch.equal(sb[:, 0], b[0])
    with pytest.raises(ValueError, match="expected 21 features"):
        lay.member_states(x[:, :-1])


def test_stacked_states_of_an_ensemble_are_its_aligned_hidden_states(members, wav):
    ens = EnsembleEncoder(members, align="linear")
    enc = StackedStatesEncoder(ens)
    lengths = torch.tensor([16000, 9000])
    ref = ens.encode(wav, lengths, output_hidden_states=True)
    out = enc.encode(wav, lengths)
    lay = enc.layout
    assert lay.names == tuple(ens.names) and lay.final_dim == ens.output_dim
    assert lay.num_states == tuple(len(m.encode(wav[:1], output_hidden_states=True).hidden_states) for m in members)
    assert out.frames.shape == (2, ref.frames.shape[1], lay.total_dim) and enc.output_dim == lay.total_dim
    assert torch.equal(out.lengths, ref.lengths) and enc.hop_size_in_ms == ens.hop_size_in_ms
    assert torch.equal(lay.final(out.frames), ref.frames)
    sa, sd = lay.member_states(out.frames)
    n_a = lay.num_states[0]
    assert torch.equal(sa[:, :, 2], ref.hidden_states[2])  # member 0, state 2
    assert torch.equal(sd[:, :, 1], ref.hidden_states[n_a + 1])  # member 1 (aligned to the BEATs grid), state 1


def test_stacked_states_fingerprint_differs_from_the_final_frames(members):
    from harmonia.eval.embed import encoder_fingerprint

    plain, wrapped = encoder_fingerprint(members[0]), encoder_fingerprint(StackedStatesEncoder(members[0]))
    assert wrapped["class"] != plain["class"] and wrapped["output_dim"] > plain["output_dim"]
    assert wrapped["config"]["stored"] == "final+all-hidden-states"
    assert wrapped["config"]["inner"] == plain["config"]


@pytest.mark.parametrize("spec, count, kept", [
    ("all", 5, (0, 1, 2, 3, 4)), ("last:2", 5, (3, 4)), ("last:9", 3, (0, 1, 2)),
    ("every:2", 5, (0, 2, 4)), ("every:3", 5, (0, 3, 4)), ("every:10", 4, (0, 3)), ("every:1", 2, (0, 1)),
])
def test_select_states(spec, count, kept):
    assert select_states(spec, count) == kept


@pytest.mark.parametrize("spec", ["", "last", "last:0", "every:-1", "every:x", "first:2", "all:2", "last:2:3"])
def test_select_states_refuses_bad_specs(spec):
    with pytest.raises(ValueError, match="expected all"):
        select_states(spec, 4)


def test_stacked_states_subset_keeps_the_chosen_states_of_each_member(members, wav):
    """`states="every:2"` stores, per member, states 0, 2, ... and the last, taken from the same
    aligned hidden states as the full stack; its cache key differs; a layer-weighted fusion over it
    with one-hot weights on a kept state equals that state."""
    from harmonia.eval.embed import encoder_fingerprint

    ens = EnsembleEncoder(members, align="linear")
    full, sub = StackedStatesEncoder(ens), StackedStatesEncoder(ens, states="every:2")
    lengths = torch.tensor([16000, 9000])
    a, b = full.encode(wav, lengths).frames, sub.encode(wav, lengths).frames
    counts = full.layout.num_states
    kept = [select_states("every:2", c) for c in counts]
    assert sub.layout.num_states == tuple(len(k) for k in kept) and sub.output_dim < full.output_dim
    assert sub.layout.to_dict()["states"] == [list(k) for k in kept]
    assert torch.equal(sub.layout.final(b), full.layout.final(a))
    for m, (fa, fb) in enumerate(zip(full.layout.member_states(a), sub.layout.member_states(b))):
        assert torch.equal(fb, fa[..., list(kept[m]), :])
    fp_full, fp_sub = encoder_fingerprint(full), encoder_fingerprint(sub)
    assert fp_full != fp_sub and fp_sub["config"]["stored"] == "final+hidden-states:every:2"
    fusion = make_fusion("layer-weighted", sub.layout)
    fusion.set_layer_weights(1, torch.eye(len(kept[1]))[-1])
    assert torch.allclose(fusion.member_sums(b)[1], sub.layout.member_states(b)[1][..., -1, :])
    assert describe(fusion)["members"][1]["states"] == list(kept[1])
    with pytest.raises(ValueError, match="expected all"):
        StackedStatesEncoder(ens, states="last:0")


def test_encoder_without_hidden_states_is_a_clear_error():
    class NoStates(harmonia.encoder.AudioEncoder):
        output_dim, hop_size_in_ms = 3, 20.0

        def num_frames(self, n):
            return max(1, n // 320)

        def _encode(self, wav, lengths, hidden):
            T = max(1, wav.shape[1] // 320)
            return harmonia.encoder.EncoderOutput(torch.zeros(wav.shape[0], T, 3), (lengths // 320).clamp(min=1))

    with pytest.raises(ValueError, match="needs hidden states.*--fusion concat"):
        StackedStatesEncoder(NoStates())
    with pytest.raises(TypeError, match="needs a harmonia encoder.*found a Linear"):
        StackedStatesEncoder(torch.nn.Linear(2, 2))


def test_unnamed_members_of_one_class_get_distinct_names(members):
    enc = StackedStatesEncoder(EnsembleEncoder([members[0], members[0], members[1]]))
    assert enc.layout.names == ("BeatsEncoder#0", "BeatsEncoder#1", "DashengEncoder#2")


# -------------------------------------------------------------------------------------------------
# the fusion modules against hand computations


def test_layer_weighted_with_one_hot_weights_selects_that_layer():
    g = torch.Generator().manual_seed(2)
    final, a, b = torch.randn(6, 5, generator=g), torch.randn(3, 6, 4, generator=g), torch.randn(2, 6, 2, generator=g)
    x = stacked(final, a, b)
    f = LayerWeightedFusion(layout2())
    f.set_layer_weights(0, torch.tensor([0.0, 1.0, 0.0]))  # one-hot on state 1
    f.set_layer_weights(1, torch.tensor([1.0, 0.0]))  # state 0
    assert [w.tolist() for w in f.layer_weights()] == [[0.0, 1.0, 0.0], [1.0, 0.0]]
    y = f(x)
    assert y.shape == (6, 6) and f.output_dim == 6
    torch.testing.assert_close(y, torch.cat([a[1], b[0]], -1), rtol=0, atol=1e-6)


def test_layer_weighted_is_a_convex_combination_and_starts_uniform():
    g = torch.Generator().manual_seed(3)
    a, b = torch.randn(3, 4, 4, generator=g), torch.randn(2, 4, 2, generator=g)
    x = stacked(torch.zeros(4, 5), a, b)
    f = LayerWeightedFusion(layout2())
    torch.testing.assert_close(f(x), torch.cat([a.mean(0), b.mean(0)], -1))
    f.set_layer_weights(0, torch.tensor([0.2, 0.5, 0.3]))
    torch.testing.assert_close(f(x)[:, :4], 0.2 * a[0] + 0.5 * a[1] + 0.3 * a[2])
    with pytest.raises(ValueError, match="summing to 1"):
        f.set_layer_weights(1, torch.tensor([0.5, 0.6]))


def test_gated_with_fixed_gates_equals_the_hand_computation():
    g = torch.Generator().manual_seed(4)
    a, b = torch.randn(3, 5, 4, generator=g), torch.randn(2, 5, 2, generator=g)
    x = stacked(torch.randn(5, 5, generator=g), a, b)
    f = GatedFusion(layout2(), width=3)
    wa, wb = torch.tensor([0.1, 0.6, 0.3]), torch.tensor([0.7, 0.3])
    Aa, ca = torch.randn(3, 4, generator=g), torch.randn(3, generator=g)
    Ab, cb = torch.randn(3, 2, generator=g), torch.randn(3, generator=g)
    gates = torch.tensor([0.25, 0.75])
    f.layers.set_layer_weights(0, wa)
    f.layers.set_layer_weights(1, wb)
    with torch.no_grad():
        f.proj[0].weight.copy_(Aa), f.proj[0].bias.copy_(ca)
        f.proj[1].weight.copy_(Ab), f.proj[1].bias.copy_(cb)
        f.gate.weight.zero_()
        f.gate.bias.copy_(gates.log())  # input-independent gates 0.25 / 0.75
    za = wa[0] * a[0] + wa[1] * a[1] + wa[2] * a[2]
    zb = wb[0] * b[0] + wb[1] * b[1]
    expected = 0.25 * (za @ Aa.T + ca) + 0.75 * (zb @ Ab.T + cb)
    torch.testing.assert_close(f(x), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(f.gates(x), gates.expand(5, 2))
    d = describe(f, x)
    assert d["kind"] == "gated" and [m["mean_gate"] for m in d["members"]] == pytest.approx([0.25, 0.75])
    assert d["members"][0]["layer_weights"] == pytest.approx(wa.tolist(), abs=1e-6)


def test_gates_depend_on_the_input_and_sum_to_one():
    f = make_fusion("gated", layout2(), seed=0, width=3)
    with torch.no_grad():
        f.gate.weight.normal_()
    x = torch.randn(8, layout2().total_dim)
    g = f.gates(x)
    torch.testing.assert_close(g.sum(-1), torch.ones(8))
    assert (g.std(0) > 1e-3).all()


def test_make_fusion_is_seeded_and_checks_the_kind():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    f1, f2 = make_fusion("gated", layout2(), seed=5), make_fusion("gated", layout2(), seed=5)
    assert torch.equal(torch.rand(1), before)  # the global RNG is untouched
    assert torch.equal(f1.proj[0].weight, f2.proj[0].weight)
    assert not torch.equal(f1.proj[0].weight, make_fusion("gated", layout2(), seed=6).proj[0].weight)
    with pytest.raises(ValueError, match="expected one of"):
        make_fusion("attention", layout2())


def test_mean_description_and_chart(tmp_path):
    runs = [{"kind": "gated", "members": [{"name": "a", "layer_weights": [0.2, 0.8], "mean_gate": 0.4},
                                          {"name": "b", "layer_weights": [1.0], "mean_gate": 0.6}]},
            {"kind": "gated", "members": [{"name": "a", "layer_weights": [0.4, 0.6], "mean_gate": 0.2},
                                          {"name": "b", "layer_weights": [1.0], "mean_gate": 0.8}]}]
    m = mean_description(runs)
    assert m["runs"] == 2 and m["members"][0]["layer_weights"] == pytest.approx([0.3, 0.7])
    assert m["members"][1]["mean_gate"] == pytest.approx(0.7)
    results = {"model": "x", "tasks": {"t1": {"fusion": m}, "t2": {"fusion": m}, "t3": {"status": "failed"}}}
    path = weights_chart(results, tmp_path / "charts" / "fusion_weights.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000
    assert weights_chart({"tasks": {"t": {"status": "ok"}}}, tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()


# -------------------------------------------------------------------------------------------------
# fusion inside the probe (harmonia.eval)


def _clip_set(n: int, seed: int, informative: bool = True):
    """Stacked states of `layout2()` where only member a's state 1 carries the class (3 classes)."""
    from harmonia.eval.linear_probe import ClipSet

    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    a = torch.randn(3, n, 4, generator=g) * 2.0
    centres = torch.tensor([[3.0, 0, 0, 0], [0, 3.0, 0, 0], [0, 0, 3.0, 0]])
    if informative:
        a[1] = centres[y] + 0.3 * torch.randn(n, 4, generator=g)
    b = torch.randn(2, n, 2, generator=g) * 2.0
    return ClipSet(stacked(torch.randn(n, 5, generator=g), a, b), y)


PROBE_TASK = dict(name="fused", formal_name="Fused", domain="sound", label_key="label", num_classes=3, epochs=25,
                  batch_size=16, learning_rate=1e-2)


@pytest.mark.parametrize("kind", ["layer-weighted", "gated"])
def test_fusion_is_trained_on_the_training_split_only(kind):
    """Test labels and features never reach the learned weights: corrupting the test split leaves
    every learned weight bit-identical (and changes the test score), while other training labels
    change them. Layer-weighted fusion gives the informative state the largest weight."""
    from harmonia.eval.linear_probe import ClipSet, train_probe
    from harmonia.eval.tasks import Task

    task = Task(**PROBE_TASK)
    train, valid, test = _clip_set(120, 0), _clip_set(40, 1), _clip_set(60, 2)
    corrupt = ClipSet(torch.randn_like(test.x), test.y.roll(1))

    def run(train_set, test_set):
        front = make_fusion(kind, layout2(), seed=0)
        r = train_probe(task, train_set, valid, test_set, seed=0, front=front)
        return r, front

    r1, f1 = run(train, test)
    r2, f2 = run(train, corrupt)
    assert all(torch.equal(p, q) for p, q in zip(f1.state_dict().values(), f2.state_dict().values()))
    assert r1.score != r2.score  # the test split was scored, and only scored
    _, f3 = run(ClipSet(train.x, train.y.roll(7)), test)
    assert any(not torch.equal(p, q) for p, q in zip(f1.state_dict().values(), f3.state_dict().values()))
    if kind == "layer-weighted":
        assert r1.score > 0.8
        w = describe(f1)["members"][0]["layer_weights"]
        assert w.index(max(w)) == 1 and w[1] > 1 / 3 + 0.05


def _tiny_tasks(root: Path):
    import dataclasses

    from harmonia.demo.tasks import write_task_data

    tasks = write_task_data(root, {"train": 10, "valid": 4, "test": 6}, seed=3)
    keep = {"synth_instrument", "synth_sed"}
    return [dataclasses.replace(t, epochs=3, batch_size=4, encode_batch_size=4) for t in tasks if t.name in keep]


@pytest.mark.slow
def test_evaluate_end_to_end_with_each_fusion(members, tmp_path):
    """One tiny ensemble, a clip and a frame task, evaluated with concat, layer-weighted and gated
    fusion through the API: results and charts name the fusion, learned weights are saved and
    plotted, the cache keys all layers apart from final frames, kNN uses the final frames."""
    import json

    from harmonia.eval import evaluate
    from harmonia.eval.report import write_combined

    tasks = _tiny_tasks(tmp_path / "data")
    ens = EnsembleEncoder(members, align="linear", names=["beats", "dasheng"])
    runs = {}
    for fusion in ("concat", "layer-weighted", "gated"):
        runs[fusion] = evaluate(ens, tasks, tmp_path / "data", tmp_path / fusion, seeds=2, fusion=fusion,
                                cache_dir=tmp_path / "cache", model_name="ens", progress=False)
    for fusion, res in runs.items():
        assert res["fusion"] == fusion
        assert {e["status"] for e in res["tasks"].values()} == {"ok"}, res["tasks"]
        saved = json.loads((tmp_path / fusion / "results.json").read_text())
        assert saved["fusion"] == fusion
        assert f"fusion `{fusion}`" in (tmp_path / fusion / "results.md").read_text()
        chart = tmp_path / fusion / "charts" / "fusion_weights.png"
        assert chart.exists() == (fusion != "concat")
    n_states = [len(m.encode(torch.zeros(1, 16000), output_hidden_states=True).hidden_states) for m in members]
    for fusion in ("layer-weighted", "gated"):
        for e in json.loads((tmp_path / fusion / "results.json").read_text())["tasks"].values():
            f = e["fusion"]
            assert f["kind"] == fusion and f["runs"] == 2 and len(f["per_run"]) == 2
            assert [m["name"] for m in f["members"]] == ["beats", "dasheng"]
            assert [len(m["layer_weights"]) for m in f["members"]] == n_states
            assert all(sum(m["layer_weights"]) == pytest.approx(1.0, abs=1e-4) for m in f["members"])
            assert ("mean_gate" in f["members"][0]) == (fusion == "gated")
        # kNN reads the encoder's own output: the same numbers as the concat run
        knn = runs[fusion]["tasks"]["synth_instrument"]["knn"]["mean"]
        assert knn == pytest.approx(runs["concat"]["tasks"]["synth_instrument"]["knn"]["mean"], abs=1e-9)
    # one cache entry for the final frames, one for all layers (shared by both learned fusions)
    assert len([p for p in (tmp_path / "cache" / "synth_instrument").iterdir() if p.is_dir()]) == 2
    # a subset of states: its own, smaller cache entry; the weights name the states they weigh
    last2 = evaluate(ens, tasks, tmp_path / "data", tmp_path / "last2", seeds=1, fusion="layer-weighted",
                     fusion_states="last:2", cache_dir=tmp_path / "cache", model_name="ens", progress=False)
    assert last2["fusion_layout"]["states"] == [[n - 2, n - 1] for n in n_states]
    for e in last2["tasks"].values():
        assert e["status"] == "ok" and [m["states"] for m in e["fusion"]["members"]] == [[n - 2, n - 1] for n in n_states]
    assert len([p for p in (tmp_path / "cache" / "synth_instrument").iterdir() if p.is_dir()]) == 3
    table = write_combined([tmp_path / f for f in runs], tmp_path / "report")
    assert "ens (clean) |" in table and "ens (clean, layer-weighted fusion)" in table
    assert "ens (clean, gated fusion)" in table


def test_cli_evaluate_takes_fusion(tmp_path, monkeypatch):
    from harmonia import cli

    seen = {}

    def fake_evaluate(encoder, tasks, data_root, out, **kw):
        seen.update(kw)
        return {"summary": {"mlp_all": 0.5, "knn_all": 0.5}, "tasks": {"t": {"status": "ok"}}}

    monkeypatch.setattr("harmonia.eval.runner.evaluate", fake_evaluate)
    monkeypatch.setattr("harmonia.eval.runner.load_encoder_source", lambda *a, **k: None)
    assert cli.main(["evaluate", "--model", "x", "--data-root", str(tmp_path), "--out", str(tmp_path / "o"),
                     "--fusion", "gated"]) == 0
    assert seen["fusion"] == "gated" and seen["fusion_states"] == "all"
    assert cli.main(["evaluate", "--model", "x", "--data-root", str(tmp_path), "--out", str(tmp_path / "o"),
                     "--fusion", "gated", "--fusion-states", "every:4"]) == 0
    assert seen["fusion_states"] == "every:4"
    # a states subset without a learned fusion, or a bad spec, is refused before the model loads
    assert cli.main(["evaluate", "--model", "x", "--data-root", ".", "--out", "o", "--fusion-states", "last:2"]) == 2
    with pytest.raises(SystemExit):
        cli.main(["evaluate", "--model", "x", "--data-root", ".", "--out", "o", "--fusion", "gated",
                  "--fusion-states", "last:0"])
    with pytest.raises(SystemExit):
        cli.main(["evaluate", "--model", "x", "--data-root", ".", "--out", "o", "--fusion", "attention"])


def test_seed_scores_and_compare_by_hand():
    from harmonia.fusion import compare, seed_scores

    run = {"tasks": {"a": {"status": "ok", "weight": 1, "mlp": {"per_seed": [0.2, 0.4]}},
                     "b": {"status": "ok", "weight": 3, "mlp": {"per_seed": [0.6, 0.8]}},
                     "c": {"status": "failed", "weight": 100}}}
    assert seed_scores(run) == pytest.approx([(0.2 + 3 * 0.6) / 4, (0.4 + 3 * 0.8) / 4])
    assert compare("gated", [0.70, 0.72, 0.71], [0.60, 0.61, 0.62])[0] == "HOLDS"
    assert compare("gated", [0.60, 0.61, 0.62], [0.70, 0.72, 0.71])[0] == "DOES NOT HOLD"
    status, text = compare("layer-weighted", [0.60, 0.70, 0.65], [0.62, 0.66, 0.64])
    assert status == "WITHIN SEED NOISE" and "difference +0.010" in text and "over 3 probe seeds" in text
    # the same paired rule as the demo: a seed that lowers both runs is not noise
    assert compare("gated", [0.70, 0.50, 0.72], [0.60, 0.41, 0.61])[0] == "HOLDS"
    assert compare("gated", [0.9], [0.1])[0] == "UNDECIDED"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_stacked_states_and_fusion_on_cuda_match_cpu(wav):
    cpu = StackedStatesEncoder(EnsembleEncoder([harmonia.load_encoder(BEATS), harmonia.load_encoder(DASHENG)]))
    gpu = StackedStatesEncoder(EnsembleEncoder([harmonia.load_encoder(BEATS, device="cuda"),
                                                harmonia.load_encoder(DASHENG, device="cuda")]))
    lengths = torch.tensor([16000, 9000])
    a, b = cpu.encode(wav, lengths), gpu.encode(wav, lengths)
    assert b.frames.device.type == "cuda" and gpu.layout == cpu.layout
    torch.testing.assert_close(b.frames.cpu(), a.frames, rtol=1e-4, atol=1e-4)
    for kind in ("layer-weighted", "gated"):
        f = make_fusion(kind, cpu.layout, seed=0)
        torch.testing.assert_close(f.cuda()(b.frames).cpu(), f.cpu()(a.frames), rtol=1e-4, atol=1e-4)


def test_demo_fusion_verdict_uses_the_seed_spread():
    from harmonia.demo.run import fusion_verdict

    def run(scores):
        return {"tasks": {"t": {"status": "ok", "weight": 1, "mlp": {"per_seed": scores}}}}

    from types import SimpleNamespace

    lines = fusion_verdict({"ensemble": run([0.50, 0.52, 0.51]), "ensemble-layer-weighted": run([0.49, 0.53, 0.51]),
                            "ensemble-gated": run([0.70, 0.71, 0.72])}, [SimpleNamespace(name="t", weight=1)])
    assert lines[0].startswith("WITHIN SEED NOISE: layer-weighted fusion")
    assert lines[1].startswith("HOLDS: gated fusion beats concatenation") and "--ablation" in lines[1]
