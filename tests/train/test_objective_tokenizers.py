from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from harmonia.layers.frontend import beats_fbank
from harmonia.models.beats import BeatsConfig, exact_patch_mask
from harmonia.train.masking import sample_kept
from harmonia.train.objective import MaskedPatchObjective
from harmonia.train.tokenizers import NormEMAVectorQuantizer, RandomProjectionTokenizer, VQKDTokenizer

TINY = BeatsConfig(encoder_layers=2, encoder_embed_dim=32, encoder_ffn_embed_dim=64, encoder_attention_heads=4,
                   embed_dim=32, conv_pos=16, conv_pos_groups=4)


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    wav = 0.1 * torch.randn(3, 3 * 16000, generator=g)
    lengths = torch.tensor([48000, 30000, 20000])
    wav[1, 30000:] = 0
    wav[2, 20000:] = 0
    fbank = beats_fbank(wav)
    return fbank, exact_patch_mask(lengths, fbank.shape[1] // 16)


def test_sample_kept_counts_order_and_padding():
    _, pad = _batch()
    keep = sample_kept(pad, 0.75, torch.Generator().manual_seed(1))
    valid = (~pad).sum(1)
    assert keep.kept_BP.sum(1).tolist() == [round(v * 0.25) for v in valid.tolist()]
    assert not (keep.kept_BP & pad).any()
    assert torch.equal(keep.masked_BP, ~keep.kept_BP & ~pad)
    for b in range(3):
        ids = keep.ids_BK[b][~keep.pad_BK[b]]
        assert torch.all(ids[1:] > ids[:-1])  # original order
        assert torch.equal(ids, keep.kept_BP[b].nonzero().squeeze(1))
    again = sample_kept(pad, 0.75, torch.Generator().manual_seed(1))
    other = sample_kept(pad, 0.75, torch.Generator().manual_seed(2))
    assert torch.equal(again.kept_BP, keep.kept_BP) and not torch.equal(other.kept_BP, keep.kept_BP)


def test_encoder_sees_only_kept_patches_and_loss_is_smoothed_ce_on_masked():
    fbank, pad = _batch()
    torch.manual_seed(0)
    model = MaskedPatchObjective(TINY, decoder_dim=32, decoder_layers=3, vocab=16)
    labels = torch.randint(0, 16, pad.shape)
    seen, logits = {}, {}
    model.backbone.encoder.register_forward_hook(lambda m, i, o: seen.update(n=i[0].shape[1]))
    model.decoder.decoder_pred.register_forward_hook(lambda m, i, o: logits.update(x=o))
    loss, stats = model(fbank, pad, labels, torch.Generator().manual_seed(3))
    keep = sample_kept(pad, 0.75, torch.Generator().manual_seed(3))
    assert seen["n"] == int(keep.kept_BP.sum(1).max())  # the encoder input is the kept 25 %, not P
    assert int(stats["masked"]) == int(keep.masked_BP.sum())
    logp = logits["x"].float().log_softmax(-1)
    y = labels[keep.masked_BP]
    manual = (0.9 * -logp.gather(1, y[:, None]).squeeze(1) - 0.1 * logp.mean(-1)).mean()
    assert torch.allclose(loss, manual, atol=1e-5)
    loss.backward()
    assert model.decoder.mask_token.grad.abs().sum() > 0
    assert model.backbone.patch_embedding.weight.grad.abs().sum() > 0


def test_random_projection_tokenizer_is_seeded_and_nearest():
    fbank, pad = _batch()
    tok = RandomProjectionTokenizer(16, 32, 64, 8, seed=42)
    labels = tok.labels(fbank, pad)
    assert labels.shape == pad.shape and labels.min() >= 0 and labels.max() < 64
    assert torch.equal(labels, RandomProjectionTokenizer(16, 32, 64, 8, seed=42).labels(fbank, pad))
    assert not torch.equal(labels, RandomProjectionTokenizer(16, 32, 64, 8, seed=45).labels(fbank, pad))
    # independent computation: unfold the patches by hand, time-major, nearest row in float64
    B, T, _ = fbank.shape
    rows = T // 16
    patches = fbank[:, : rows * 16].reshape(B, rows, 16, 8, 16).permute(0, 1, 3, 2, 4).reshape(B, rows * 8, 256)
    x = patches.double() @ tok.patch_weight.reshape(32, 256).double().T
    x = (x - x.mean(-1, keepdim=True)) / (x.var(-1, unbiased=False, keepdim=True) + 1e-5).sqrt()
    z = x @ tok.projection.double().T
    z = (z - z.mean(-1, keepdim=True)) / (z.var(-1, unbiased=False, keepdim=True) + 1e-5).sqrt()
    manual = torch.cdist(z, tok.codebook.double()[None]).argmin(-1)
    assert (manual == labels).float().mean() > 0.99


def test_vq_kmeans_init_and_ema_update():
    torch.manual_seed(0)
    centers = F.normalize(torch.randn(4, 8), dim=-1)
    data = F.normalize(centers.repeat(50, 1) + 0.05 * torch.randn(200, 8), dim=-1)
    vq = NormEMAVectorQuantizer(4, 8, beta=1.0, decay=0.5).train()
    assert vq.initted.item() == 0
    zq, codes, loss = vq(data, torch.Generator().manual_seed(0))
    assert vq.initted.item() == 1
    assert torch.allclose(vq.weight.norm(dim=-1), torch.ones(4), atol=1e-5)
    # every true centre has a code within cosine 0.95 after init + one EMA step
    assert ((centers @ vq.weight.T).max(1).values > 0.95).all()
    assert math.isfinite(loss.item())
    vq.eval()  # no EMA update: the straight-through value is exactly the code chosen for each vector
    zq, codes, loss = vq(data)
    z = F.normalize(data, dim=-1)
    assert torch.equal(codes, (z @ vq.weight.T).argmax(-1))
    torch.testing.assert_close(zq, vq.weight[codes], rtol=0, atol=1e-6)
    torch.testing.assert_close(loss, ((vq.weight[codes] - z) ** 2).mean())  # beta = 1


def test_vqkd_exports_a_microsoft_layout_tokenizer(tmp_path):
    from harmonia.encoders.beats import BeatsEncoder
    from harmonia.hub import load_tokenizer, save_harmonia

    torch.manual_seed(0)
    fbank, pad = _batch()
    model = VQKDTokenizer(TINY, teacher_dim=48, quant_n=16, quant_dim=8, decoder_layers=1).train()
    teacher = torch.randn(3, pad.shape[1], 48)
    loss, stats = model(fbank, pad, teacher, torch.Generator().manual_seed(0))
    loss.backward()
    assert model.backbone.patch_embedding.weight.grad is not None and 0 < int(stats["codes_used"]) <= 16
    tok = model.to_tokenizer_model()
    assert "quantize.embedding.weight" in tok.state_dict() and "quantize_layer.2.weight" in tok.state_dict()
    save_harmonia(BeatsEncoder(tok), tmp_path / "tok")
    loaded = load_tokenizer(tmp_path / "tok")
    wav = 0.1 * torch.randn(1, 32000)
    labels = loaded.labels(wav)
    # independent: student backbone -> quantize_layer -> cosine-nearest code
    model.eval()
    with torch.no_grad():
        x, _ = model.backbone(beats_fbank(wav))
        z = F.normalize(model.quantize_layer(x), dim=-1)
        manual = (z @ model.quantize.weight.T).argmax(-1)
    assert torch.equal(labels, manual)
