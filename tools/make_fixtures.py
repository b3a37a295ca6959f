#!/usr/bin/env python3
"""Re-create the golden parity fixtures in tests/fixtures/{beats,dasheng,audio} with the reference code.

Run it with the python of the side environment that tools/make_reference_env.sh builds (it holds
the Microsoft BEATs sources, PyPI `openbeats` 0.1.1 with ESPnet's BeatsEncoder, PyPI `dasheng`
0.0.9 and torchaudio in pure-Python mode). Never import this from harmonia.

  check   load the stored checkpoints and inputs, run the references again and compare every
          stored expected tensor (and the Dasheng Hugging Face folder, which is a pure conversion
          of model_a.pt). Prints one line per tensor with its max abs difference and whether it is
          bit-identical; exit status 1 if any float tensor differs by more than the tolerance the
          fixture README documents for it (or --atol), or any integer tensor differs at all.
  make    write a complete fixture set into --out: seeded inputs and checkpoints built by the
          recipe in the fixture READMEs, then every expected tensor from the references. The
          inputs and weights are NOT byte-identical to the stored ones (the first generator's
          random streams were not kept); a set made here is self-consistent and can replace the
          stored one as a whole.

  python tools/make_fixtures.py check --ms-beats ENV/src/unilm-beats [--hf-dasheng ENV/src/hf-dasheng]
  python tools/make_fixtures.py make --out /tmp/fixtures --ms-beats ENV/src/unilm-beats

Run with 1 thread (the default here): with 2 threads the BEATs encoder outputs move by up to 2e-6.
The expected-tensor computation is shared by both commands, so `check` tests exactly the code
that `make` runs.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
SR = 16000


# -------------------------------------------------------------------------------------------------
# BEATs: Microsoft BEATs.py / Tokenizers.py and ESPnet BeatsEncoder (openbeats 0.1.1)


def _ms():
    """The Microsoft modules (flat imports, as in the unilm `beats/` folder)."""
    import BEATs
    import Tokenizers

    return BEATs, Tokenizers


def _espnet(cfg: dict, **kw):
    from openbeats.beats_encoder import BeatsEncoder

    return BeatsEncoder(input_size=0, beats_config=cfg, is_pretraining=False, **kw)


def _espnet_load(enc, state: dict):
    from openbeats.utils import encoder_state_dict

    missing, unexpected = enc.load_state_dict(encoder_state_dict(state), strict=False)
    return enc.eval(), sorted(missing), sorted(unexpected)


def _ms_hidden(model, wav, padding_mask) -> torch.Tensor:
    """(L+1, B, P, D): the input of layer 0 (after pos-conv and LayerNorm), then every layer's output."""
    captured = {}
    hook = model.encoder.register_forward_pre_hook(
        lambda mod, args, kwargs: captured.update(x=args[0].clone(), mask=kwargs.get("padding_mask")),
        with_kwargs=True)
    model.extract_features(wav, padding_mask=padding_mask)
    hook.remove()
    L = len(model.encoder.layers)
    _, results = model.encoder.extract_features(captured["x"], captured["mask"], tgt_layer=L - 1)
    return torch.stack([r[0].transpose(0, 1) for r in results])


def _tokenizer_margin(tok, wav, padding_mask=None) -> torch.Tensor:
    """Per patch: distance to the second-best code minus distance to the best, computed as the
    reference computes distances."""
    z = {}
    hook = tok.quantize_layer.register_forward_hook(lambda mod, args, out: z.update(x=out))
    tok.extract_labels(wav, padding_mask=padding_mask)
    hook.remove()
    zf = F.normalize(z["x"], dim=-1).reshape(-1, z["x"].shape[-1])
    e = tok.quantize.embedding.weight
    d = zf.pow(2).sum(1, keepdim=True) + e.pow(2).sum(1) - 2 * torch.einsum("bd,nd->bn", zf, e)
    top2 = d.topk(2, dim=1, largest=False).values
    return top2[:, 1] - top2[:, 0]


@torch.no_grad()
def beats_expected(d: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Every tensor of expected.safetensors, from the checkpoints and inputs in `d`."""
    BEATs, Tokenizers = _ms()
    inp = load_file(d / "inputs.safetensors")
    wa, wb, lens = inp["wav_a"], inp["wav_b"], inp["lengths_batch"]
    batch = torch.zeros(2, int(lens.max()))
    batch[0, : len(wa)], batch[1, : len(wb)] = wa, wb
    pad = torch.arange(batch.shape[1])[None] >= lens[:, None]
    ck_a = torch.load(d / "beats_ms_iter3_small.pt", map_location="cpu", weights_only=True)
    ck_b = torch.load(d / "openbeats_small_ssl.pt", map_location="cpu", weights_only=True)
    ck_bp = torch.load(d / "openbeats_small_espnet_prefixed.pth", map_location="cpu", weights_only=True)
    ck_c = torch.load(d / "beats_ms_tokenizer_small.pt", map_location="cpu", weights_only=True)
    out, report = {}, {}

    # Microsoft, case A
    ms = BEATs.BEATs(BEATs.BEATsConfig(ck_a["cfg"]))
    ms.load_state_dict(ck_a["model"])
    ms.eval()
    out["fbank_a"], out["fbank_b"] = ms.preprocess(wa[None])[0], ms.preprocess(wb[None])[0]
    out["fbank_batch_row0"] = ms.preprocess(batch)[0]
    import torchaudio.compliance.kaldi as kaldi

    out["povey_window_400"] = kaldi._feature_window_function("povey", 400, 0.42, torch.device("cpu"),
                                                             torch.float32)
    out["mel_banks_128x257"] = F.pad(kaldi.get_mel_banks(128, 512, 16000.0, 20.0, 0.0, 100.0, -500.0, 1.0)[0],
                                     (0, 1))
    attn = ms.encoder.layers[0].self_attn
    out["rel_pos_bucket_-1000_1000"] = attn._relative_positions_bucket(torch.arange(-1000, 1001))
    out["ms_iter3_out_a"] = ms.extract_features(wa[None])[0]
    out["ms_iter3_out_b"] = ms.extract_features(wb[None])[0]
    out["ms_iter3_out_batch"], out["ms_iter3_patch_padding_mask_batch"] = ms.extract_features(batch, pad)
    out["ms_iter3_hidden_b"] = _ms_hidden(ms, wb[None], None)
    out["ms_iter3_hidden_batch"] = _ms_hidden(ms, batch, pad)

    # ESPnet (openbeats) on case A
    enc, missing, unexpected = _espnet_load(_espnet(ck_a["cfg"]), ck_a["model"])
    report["A: openbeats load missing / unexpected keys"] = [missing, unexpected]
    out["espnet_iter3_out_batch"], out["espnet_iter3_out_lens_batch"], _ = enc(batch, lens, waveform_input=True)
    mask = enc.extract_features(batch.unsqueeze(-1), pad)[1]
    out["espnet_patch_padding_mask_batch"] = mask

    # case B: OpenBEATs SSL format through ESPnet, then through Microsoft
    ob, missing, unexpected = _espnet_load(_espnet(ck_b["cfg"]), ck_b["model"])
    report["B: openbeats load missing / unexpected keys"] = [missing, unexpected]
    out["openbeats_out_a"] = ob(wa[None], lens[:1].clone().fill_(len(wa)), waveform_input=True)[0]
    out["openbeats_out_b"] = ob(wb[None], lens[1:], waveform_input=True)[0]
    out["openbeats_out_batch"], out["openbeats_out_lens_batch"], _ = ob(batch, lens, waveform_input=True)
    layers = ck_b["cfg"]["encoder_layers"]
    hidden = [_espnet_load(_espnet(ck_b["cfg"], max_layer=k), ck_b["model"])[0](wb[None], lens[1:])[0]
              for k in range(layers)]
    out["openbeats_hidden_b"] = torch.stack(hidden + [out["openbeats_out_b"]])
    obp = _espnet_load(_espnet(ck_b["cfg"]), ck_bp)[0]
    report["B: encoder.-prefixed .pth vs SSL .pt (b)"] = _diff(obp(wb[None], lens[1:])[0], out["openbeats_out_b"])
    ms_b = BEATs.BEATs(BEATs.BEATsConfig({**ck_b["cfg"], "input_patch_size": 16, "embed_dim": 512}))
    report["B: MS load missing / unexpected keys"] = [sorted(x) for x in ms_b.load_state_dict(ck_b["model"],
                                                                                              strict=False)]
    out["ms_on_openbeats_out_batch"] = ms_b.eval().extract_features(batch, pad)[0]

    # case C: the Microsoft tokenizer
    tok = Tokenizers.Tokenizers(Tokenizers.TokenizersConfig(ck_c["cfg"]))
    tok.load_state_dict(ck_c["model"])
    tok.eval()
    out["tokenizer_labels_a"] = tok.extract_labels(wa[None])
    out["tokenizer_labels_b"] = tok.extract_labels(wb[None])
    out["tokenizer_labels_batch"] = tok.extract_labels(batch, padding_mask=pad)
    out["tokenizer_margin_a"] = _tokenizer_margin(tok, wa[None])
    out["tokenizer_margin_b"] = _tokenizer_margin(tok, wb[None])
    out["tokenizer_margin_batch"] = _tokenizer_margin(tok, batch, pad)

    # cross-implementation facts the README states
    report["A: ESPnet vs MS, batch row 1 (unpadded)"] = _diff(out["espnet_iter3_out_batch"][1], out["ms_iter3_out_batch"][1])
    report["A: ESPnet batch row 0 valid part vs MS single a"] = _diff(out["espnet_iter3_out_batch"][0, :152],
                                                                      out["ms_iter3_out_a"][0])
    report["A: MS batch row 0 first 152 vs MS single a"] = _diff(out["ms_iter3_out_batch"][0, :152], out["ms_iter3_out_a"][0])
    report["C: min margin (a, b, batch)"] = [float(out[f"tokenizer_margin_{k}"].min()) for k in ("a", "b", "batch")]
    return {k: v.contiguous() for k, v in out.items()}, report


# -------------------------------------------------------------------------------------------------
# Dasheng: PyPI dasheng 0.0.9 (and, optionally, the Hugging Face remote code)


def _dasheng(path: Path):
    from dasheng.pretrained.pretrained import Dasheng

    ck = torch.load(path, map_location="cpu", weights_only=True)
    m = Dasheng(**ck["config"])
    m.load_state_dict(ck["model"], strict=True)
    return m.eval()


def _dasheng_layers(m, x: torch.Tensor) -> torch.Tensor:
    """(depth+1, T', D): the input of blocks[0] and every block's output, chunks concatenated."""
    per_chunk: list[list[torch.Tensor]] = []
    hooks = [m.blocks[0].register_forward_pre_hook(lambda mod, args: per_chunk.append([args[0][0]]))]
    hooks += [b.register_forward_hook(lambda mod, args, o: per_chunk[-1].append(o[0])) for b in m.blocks]
    m(x[None])
    for h in hooks:
        h.remove()
    return torch.stack([torch.cat(states, 0) for states in zip(*per_chunk)])


def _dasheng_waves(d: Path) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    inp = load_file(d / "inputs.safetensors")
    x = {k[4:]: v.float() / 32768.0 for k, v in inp.items() if k.startswith("wav_")}
    lens = inp["batch_lengths"]
    xb = torch.zeros(3, int(lens.max()))
    for i, k in enumerate(("1p5s", "4s", "12p5s")):
        xb[i, : len(x[k])] = x[k]
    return x, xb, lens


@torch.no_grad()
def dasheng_expected(d: Path, hf_code: Path | None) -> tuple[dict[str, dict[str, torch.Tensor]], dict]:
    """Every tensor of frontend.safetensors and outputs_model_{a,b}[_hf_code].safetensors."""
    x, xb, lens = _dasheng_waves(d)
    a, b = _dasheng(d / "model_a.pt"), _dasheng(d / "model_b.pt")
    fe = {"mel_fb": a.front_end[0].mel_scale.fb, "window": a.front_end[0].spectrogram.window,
          "power_mel_1p5s": a.front_end[0](x["1p5s"][None])[0], "batch_mel_db": a.front_end(xb)}
    fe.update({f"mel_db_{k}": a.front_end(x[k][None])[0] for k in ("1p5s", "4s", "12p5s", "min")})
    files = {"frontend.safetensors": fe}
    for name, m in (("a", a), ("b", b)):
        o = {"bn_out_1p5s": m.forward_to_spec(x["1p5s"][None])[0, 0]}
        o.update({f"emb_{k}": m(x[k][None])[0] for k in ("1p5s", "4s", "12p5s", "min")})
        o["batch_emb_masked"] = m(xb, x_length=lens)
        if name == "a":
            o["layers_1p5s"], o["layers_12p5s"] = _dasheng_layers(m, x["1p5s"]), _dasheng_layers(m, x["12p5s"])
            o["batch_emb_nomask"] = m(xb)
        files[f"outputs_model_{name}.safetensors"] = o
    report = {"front end batch row 2 vs single 12.5 s": _diff(fe["batch_mel_db"][2], fe["mel_db_12p5s"])}
    if hf_code is not None:
        sys.path.insert(0, str(hf_code))
        from dasheng_model.feature_extraction_dasheng import DashengFeatureExtractor
        from dasheng_model.modeling_dasheng import DashengModel

        hf = DashengModel.from_pretrained(str(d / "model_a_hf"), outputdim=None).eval()
        feats = DashengFeatureExtractor()(x["12p5s"][None], sampling_rate=SR, return_tensors="pt")
        files["outputs_model_a_hf_code.safetensors"] = {"hf_emb_12p5s": hf(**feats).hidden_states[0]}
    return {f: {k: v.contiguous() for k, v in t.items()} for f, t in files.items()}, report


def dasheng_hf_folder(model_pt: Path, out: Path) -> None:
    """model_a.pt in the layout of huggingface.co/mispeech/dasheng-*: `encoder.` keys without the
    front-end buffers, and the two JSON configs (the architecture in `encoder_kwargs`)."""
    ck = torch.load(model_pt, map_location="cpu", weights_only=True)
    state = {"encoder." + k: v.contiguous() for k, v in ck["model"].items() if not k.startswith("front_end.")}
    out.mkdir(parents=True, exist_ok=True)
    save_file(state, out / "model.safetensors", metadata={"format": "pt"})
    c = ck["config"]
    kwargs = {"depth": c["depth"], "embed_dim": c["embed_dim"], "num_heads": c["num_heads"],
              "patch_size": list(c.get("patch_size", [64, 4])), "patch_stride": list(c.get("patch_stride", [64, 4])),
              "target_length": c.get("target_length", 1008)}
    # what `DashengModel.save_pretrained` writes (transformers 5.24): keys sorted, indent 2
    config = {"architectures": ["DashengModel"],
              "auto_map": {"AutoConfig": "configuration_dasheng.DashengConfig",
                           "AutoModel": "modeling_dasheng.DashengModel"},
              "depth": c["depth"], "embed_dim": c["embed_dim"], "encoder_kwargs": kwargs, "loss": "BCELoss",
              "model_type": "dasheng", "name": "dasheng-base", "num_heads": c["num_heads"], "torch_dtype": "float32"}
    pre = {"auto_map": {"AutoFeatureExtractor": "feature_extraction_dasheng.DashengFeatureExtractor"},
           "center": True, "f_max": 8000, "f_min": 0, "feature_extractor_type": "DashengFeatureExtractor",
           "feature_size": 64, "hop_size": 160, "model_input_names": ["input_values"], "n_fft": 512,
           "padding_side": "right", "padding_value": 0.0, "return_attention_mask": False, "sampling_rate": SR,
           "win_size": 512}
    for name, obj in (("config.json", config), ("preprocessor_config.json", pre)):
        (out / name).write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def audio_example(beats_dir: Path) -> bytes:
    """tests/fixtures/audio/example.wav: the BEATs input `wav_a` as 16-bit PCM WAV."""
    import io

    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, load_file(beats_dir / "inputs.safetensors")["wav_a"].numpy(), SR, subtype="PCM_16", format="WAV")
    return buf.getvalue()


# -------------------------------------------------------------------------------------------------
# make: seeded inputs and checkpoints (the recipe of the fixture READMEs)


def _chirp(n: int, f0: float, f1: float) -> torch.Tensor:
    """Linear chirp from f0 to f1 Hz over n samples, float64."""
    t = np.arange(n) / SR
    return torch.from_numpy(np.sin(2 * np.pi * (f0 * t + 0.5 * (f1 - f0) / (n / SR) * t**2)))


def _perturb_beats(model: torch.nn.Module, g: torch.Generator) -> None:
    """Seeded noise on every parameter so that no weight keeps a trivial value."""
    for name, p in model.named_parameters():
        if name.endswith("weight_g"):
            p.mul_(torch.exp(0.1 * torch.randn(p.shape, generator=g)))
        elif "relative_attention_bias" in name:
            p.add_(0.5 * torch.randn(p.shape, generator=g))
        elif name.endswith("grep_a"):
            p.add_(0.2 * torch.randn(p.shape, generator=g))
        else:
            p.add_((0.1 if p.ndim == 1 else 0.02) * torch.randn(p.shape, generator=g))


def beats_inputs(seed: int) -> dict[str, torch.Tensor]:
    """inputs.safetensors: two noisy chirps. The stored file follows this recipe to within one
    float32 ulp on a few samples (np.sin rounds differently on different CPUs)."""
    rng = np.random.default_rng(seed)
    wa = (0.4 * _chirp(51200, 200, 4000) + 0.05 * torch.from_numpy(rng.standard_normal(51200))).clamp(-1, 1)
    wb = (0.3 * _chirp(80000, 6000, 300) + 0.1 * torch.from_numpy(rng.standard_normal(80000))).clamp(-1, 1)
    return {"wav_a": wa.float(), "wav_b": wb.float(), "lengths_batch": torch.tensor([51200, 80000])}


BEATS_FLAGS = dict(input_patch_size=16, conv_bias=False, activation_fn="gelu", layer_norm_first=False,
                   deep_norm=True, conv_pos=128, conv_pos_groups=16, relative_position_embedding=True,
                   num_buckets=320, max_distance=800, gru_rel_pos=True, dropout=0.0, attention_dropout=0.0,
                   activation_dropout=0.0, dropout_input=0.0)


@torch.no_grad()
def make_beats(out: Path, seed: int) -> None:
    BEATs, Tokenizers = _ms()
    g = torch.Generator().manual_seed(seed)
    out.mkdir(parents=True, exist_ok=True)
    inputs = beats_inputs(seed)
    save_file(inputs, out / "inputs.safetensors")
    wa, wb = inputs["wav_a"].double(), inputs["wav_b"].double()
    # case A: Microsoft iter3 layout, small sizes
    cfg_a = {**BEATS_FLAGS, "embed_dim": 96, "encoder_layers": 3, "encoder_embed_dim": 64,
             "encoder_ffn_embed_dim": 256, "encoder_attention_heads": 4, "layer_wise_gradient_decay_ratio": 0.6,
             "encoder_layerdrop": 0.05, "finetuned_model": False, "predictor_dropout": 0.0, "predictor_class": 527}
    torch.manual_seed(seed)
    ms = BEATs.BEATs(BEATs.BEATsConfig(cfg_a))
    _perturb_beats(ms, g)
    torch.save({"cfg": cfg_a, "model": ms.state_dict()}, out / "beats_ms_iter3_small.pt")
    # case B: the OpenBEATs SSL cfg keys (embed_dim and input_patch_size absent on purpose)
    cfg_b = {"encoder_layers": 2, "encoder_embed_dim": 64, "encoder_ffn_embed_dim": 256, "encoder_attention_heads": 8,
             "decoder_embed_dim": 64, "decoder_attention_heads": 8, "decoder_layers": 3, "codebook_vocab_size": 1024,
             "mask_ratio": 0.75, "dropout": 0.1, "encoder_layerdrop": 0.0, "deep_norm": True,
             "relative_position_embedding": True, "num_buckets": 320, "max_distance": 800, "gru_rel_pos": True,
             "use_flash_attn": False}
    ob = _espnet(cfg_b)
    _perturb_beats(ob, g)
    state = {k: v for k, v in ob.state_dict().items()}
    state["patch_embedding_pad.weight"] = torch.ones_like(state["patch_embedding_pad.weight"])
    state["raw2fbank_pad.weight"] = torch.ones_like(state["raw2fbank_pad.weight"])
    torch.save({"cfg": cfg_b, "model": state}, out / "openbeats_small_ssl.pt")
    torch.save({"encoder." + k: v for k, v in state.items()}, out / "openbeats_small_espnet_prefixed.pth")
    # case C: tokenizer; the codebook is drawn from the tokenizer's own (l2-normalised) features so
    # that labels are spread, trying seeded draws and keeping the one with the largest top-1/top-2 margin
    cfg_c = {**BEATS_FLAGS, "embed_dim": 96, "encoder_layers": 2, "encoder_embed_dim": 64,
             "encoder_ffn_embed_dim": 256, "encoder_attention_heads": 4, "encoder_layerdrop": 0.0,
             "quant_n": 64, "quant_dim": 16}
    tok = Tokenizers.Tokenizers(Tokenizers.TokenizersConfig(cfg_c))
    _perturb_beats(tok, g)
    tok.quantize.embedding.initted.fill_(1.0)
    tok.eval()
    z = {}
    hook = tok.quantize_layer.register_forward_hook(lambda mod, args, o: z.update(x=o))
    tok.extract_labels(torch.stack([wa[:51200], wb[:51200]]).float())
    hook.remove()
    feats = F.normalize(z["x"].reshape(-1, 16), dim=-1)
    best = (-1.0, None)
    for _trial in range(200):
        codes = feats[torch.randperm(len(feats), generator=g)[:64]]
        codes = F.normalize(codes + 0.05 * torch.randn(codes.shape, generator=g), dim=-1)
        d = (feats @ codes.T).topk(2, dim=1).values
        margin = float((2 * (d[:, 0] - d[:, 1])).min())
        if margin > best[0]:
            best = (margin, codes)
    tok.quantize.embedding.weight.copy_(best[1])
    tok.quantize.embedding.embed_avg.copy_(best[1])
    torch.save({"cfg": cfg_c, "model": tok.state_dict()}, out / "beats_ms_tokenizer_small.pt")
    exp, _ = beats_expected(out)
    save_file(exp, out / "expected.safetensors")


def _dasheng_wave(n: int, f0: float, f1: float, amp: float, noise: float, seed: int, am: float = 0.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(n, dtype=torch.float64) / SR
    y = amp * _chirp(n, f0, f1)
    if am:
        y = y * (0.6 + 0.4 * torch.sin(2 * math.pi * am * t))
    y = y + noise * torch.randn(n, generator=g, dtype=torch.float64)
    return (y.clamp(-1, 1) * 32767).round().to(torch.int16)


@torch.no_grad()
def make_dasheng(out: Path, hf_code: Path | None) -> None:
    from dasheng.pretrained.pretrained import Dasheng

    out.mkdir(parents=True, exist_ok=True)
    w4 = _dasheng_wave(64000, 4000, 300, 0.5, 0.02, 102)
    w4[24000:28000] = 0  # digital silence: the top_db floor bites
    tone = torch.sin(2 * math.pi * 1000 * torch.arange(480, dtype=torch.float64) / SR)
    inputs = {"wav_1p5s": _dasheng_wave(24000, 200, 3000, 0.3, 0.05, 101, am=0.7), "wav_4s": w4,
              "wav_12p5s": _dasheng_wave(200000, 60, 7900, 0.8, 0.01, 103),
              "wav_min": (0.5 * tone * 32767).round().to(torch.int16),
              "batch_lengths": torch.tensor([24000, 64000, 200000])}
    save_file(inputs, out / "inputs.safetensors")
    x = {k[4:]: v.float() / 32768.0 for k, v in inputs.items() if k.startswith("wav_")}
    for name, config, seed in (("a", dict(embed_dim=64, depth=3, num_heads=4), 1234),
                               ("b", dict(embed_dim=64, depth=2, num_heads=2, mlp_ratio=2.0, init_values=0.1,
                                          target_length=400), 5678)):
        torch.manual_seed(seed)
        m = Dasheng(**config)
        g = torch.Generator().manual_seed(seed + 1)
        for pname, p in m.named_parameters():
            scale = 0.1 if ("norm" in pname or "init_bn" in pname) and pname.endswith("weight") and p.ndim == 1 \
                else 0.05 if pname.endswith("bias") or pname.endswith("gamma") else 0.02
            p.add_(scale * torch.randn(p.shape, generator=g))
        mel = torch.cat([m.front_end(x[k][None])[0] for k in ("1p5s", "4s", "12p5s")], dim=-1)  # (64, T)
        bn = m.init_bn[1]
        bn.running_mean.copy_(mel.mean(1) + 0.5 * torch.randn(64, generator=g))
        bn.running_var.copy_(mel.var(1) * (1 + 0.1 * torch.rand(64, generator=g)))
        bn.num_batches_tracked.fill_(123456)
        torch.save({"model": m.state_dict(), "config": config}, out / f"model_{name}.pt")
    dasheng_hf_folder(out / "model_a.pt", out / "model_a_hf")
    files, _ = dasheng_expected(out, hf_code)
    for f, tensors in files.items():
        save_file(tensors, out / f)


# -------------------------------------------------------------------------------------------------


def _diff(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.shape != b.shape:
        return float("inf")
    if a.dtype in (torch.bool, torch.int64, torch.int32, torch.int16):
        return float((a != b).sum())
    return float((a.double() - b.double()).abs().max()) if a.numel() else 0.0


# the tolerances the fixture READMEs document (max abs difference); integer and boolean tensors are exact
TOLERANCES = (("fbank", 2e-4), ("povey_window", 1e-7), ("window", 1e-7), ("mel_banks", 1e-5), ("mel_fb", 1e-5),
              ("tokenizer_margin", 1e-5), ("mel_db", 2e-3), ("power_mel", 1e-3), ("bn_out", 2e-4))


def tolerance(key: str, atol: float | None) -> float:
    if atol is not None:
        return atol
    return next((t for part, t in TOLERANCES if part in key), 1e-4)  # encoder outputs: 1e-4


def _compare(stored: Path, fresh: dict[str, torch.Tensor], atol: float | None) -> int:
    ref = load_file(stored)
    bad = 0
    for k in sorted(set(ref) | set(fresh)):
        if k not in ref or k not in fresh:
            print(f"  {stored.name}:{k}: only in {'the new tensors' if k in fresh else 'the stored file'}")
            bad += 1
            continue
        d = _diff(fresh[k], ref[k]) if fresh[k].dtype == ref[k].dtype else float("inf")
        ok = d <= (tolerance(k, atol) if ref[k].is_floating_point() else 0)
        bad += not ok
        print(f"  {'ok ' if ok else 'BAD'} {stored.name}:{k} {tuple(ref[k].shape)} max abs diff {d:.3g}"
              f"{' (bit-identical)' if torch.equal(fresh[k], ref[k]) else ''}")
    return bad


def check(a) -> int:
    bad = 0
    if a.family in ("beats", "all"):
        print("BEATs:")
        exp, report = beats_expected(a.fixtures / "beats")
        bad += _compare(a.fixtures / "beats" / "expected.safetensors", exp, a.atol)
        same = audio_example(a.fixtures / "beats") == (a.fixtures / "audio" / "example.wav").read_bytes()
        print(f"  {'ok ' if same else 'BAD'} audio/example.wav: {'byte-identical' if same else 'differs'}")
        bad += not same
        print("  " + json.dumps(report))
    if a.family in ("dasheng", "all"):
        print("Dasheng:")
        d = a.fixtures / "dasheng"
        files, report = dasheng_expected(d, a.hf_dasheng)
        for f, tensors in files.items():
            bad += _compare(d / f, tensors, a.atol)
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            dasheng_hf_folder(d / "model_a.pt", Path(tmp))
            for f in ("model.safetensors", "config.json", "preprocessor_config.json"):
                same = (Path(tmp) / f).read_bytes() == (d / "model_a_hf" / f).read_bytes()
                if f.endswith(".json") and not same:  # same content, other formatting?
                    same = json.loads((Path(tmp) / f).read_text()) == json.loads((d / "model_a_hf" / f).read_text())
                    print(f"  {'ok ' if same else 'BAD'} model_a_hf/{f}: {'same JSON content' if same else 'differs'}")
                else:
                    print(f"  {'ok ' if same else 'BAD'} model_a_hf/{f}: {'byte-identical' if same else 'differs'}")
                bad += not same
        print("  " + json.dumps(report))
    tol = "the documented tolerances" if a.atol is None else f"atol {a.atol:g}"
    print(f"{'all match' if not bad else f'{bad} tensor(s) out of tolerance'} ({tol}; integer tensors exact)")
    return 1 if bad else 0


def make(a) -> int:
    if a.family in ("beats", "all"):
        make_beats(a.out / "beats", a.seed)
        (a.out / "audio").mkdir(parents=True, exist_ok=True)
        (a.out / "audio" / "example.wav").write_bytes(audio_example(a.out / "beats"))
    if a.family in ("dasheng", "all"):
        make_dasheng(a.out / "dasheng", a.hf_dasheng)
    print(f"fixtures written to {a.out}")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=["check", "make"])
    p.add_argument("--family", choices=["beats", "dasheng", "all"], default="all")
    p.add_argument("--fixtures", type=Path, default=FIXTURES, help="the fixture folder to check")
    p.add_argument("--out", type=Path, help="make: where to write the new set")
    p.add_argument("--ms-beats", type=Path, help="folder with Microsoft's BEATs.py, backbone.py, modules.py, "
                   "Tokenizers.py, quantizer.py (unilm `beats/`; make_reference_env.sh puts them in ENV/src/unilm-beats)")
    p.add_argument("--hf-dasheng", type=Path, help="checkout of the Hugging Face remote code "
                   "(jimbozhang/hf_transformers_custom_model_dasheng); needs `transformers`. Without it the "
                   "HF-code output is not recomputed")
    p.add_argument("--atol", type=float, help="one tolerance for every float tensor (0: byte for byte); "
                   "default: the per-tensor tolerances of the fixture READMEs")
    p.add_argument("--seed", type=int, default=20230101)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.use_deterministic_algorithms(True)
    if a.family in ("beats", "all"):
        if a.ms_beats is None or not (a.ms_beats / "BEATs.py").is_file():
            p.error("--ms-beats: give the folder that holds Microsoft's BEATs.py (see tools/make_reference_env.sh)")
        sys.path.insert(0, str(a.ms_beats))
    if a.command == "make" and a.out is None:
        p.error("make needs --out")
    return {"check": check, "make": make}[a.command](a)


if __name__ == "__main__":
    sys.exit(main())
