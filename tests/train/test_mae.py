"""Dasheng's masked-autoencoder objective (harmonia.train.mae), on a tiny config."""

from __future__ import annotations

import torch

from harmonia.models.dasheng import DashengConfig
from harmonia.train.mae import DashengMAE

CFG = DashengConfig(embed_dim=32, depth=2, num_heads=4)


def _batch():
    g = torch.Generator().manual_seed(0)
    t = torch.arange(32000) / 16000
    wav = torch.stack([0.3 * torch.sin(2 * torch.pi * f * t) for f in (300.0, 1200.0)])
    wav = wav + 0.01 * torch.randn(wav.shape, generator=g)
    lengths = torch.tensor([32000, 20000])
    wav[1, 20000:] = 0
    return wav, lengths


def _calibrated_model() -> tuple[DashengMAE, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = DashengMAE(CFG, decoder_dim=32, decoder_depth=1, decoder_heads=4)
    wav, lengths = _batch()
    model.set_mel_statistics(wav)
    return model, wav, lengths


def test_loss_counts_only_masked_valid_patches_and_ignores_padding():
    model, wav, lengths = _calibrated_model()
    loss, stats = model(wav, lengths, torch.Generator().manual_seed(1))
    tokens = (1 + lengths // 160) // 4  # 50 and 31 valid patches
    kept = torch.round(tokens.double() * 0.25).long()  # MAE keeps a quarter
    assert int(stats["masked"]) == int((tokens - kept).sum())
    assert torch.isfinite(loss) and loss > 0
    # what lies in the padding cannot change the loss
    noisy = wav.clone()
    noisy[1, 20000 + 640:] = torch.randn(32000 - 20640)  # past the last valid patch's samples
    loss2, _ = model(noisy, lengths, torch.Generator().manual_seed(1))
    assert torch.allclose(loss, loss2, atol=1e-6)


def test_training_steps_reduce_the_reconstruction_loss():
    torch.manual_seed(0)
    model = DashengMAE(CFG, decoder_dim=32, decoder_depth=1, decoder_heads=4)
    wav, lengths = _batch()
    model.set_mel_statistics(wav)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for step in range(40):
        loss, _ = model(wav, lengths, torch.Generator().manual_seed(step % 2))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5


def test_forward_and_backward_under_bf16_autocast():
    """The mask tokens take the decoder's dtype (bf16 under autocast on GPU; CPU autocast here)."""
    model, wav, lengths = _calibrated_model()
    ref, _ = model(wav, lengths, torch.Generator().manual_seed(1))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, stats = model(wav, lengths, torch.Generator().manual_seed(1))
    loss.backward()
    assert torch.isfinite(loss) and abs(loss.item() - ref.item()) < 0.05 * ref.item()
    assert model.decoder_embed.weight.grad is not None and torch.isfinite(model.decoder_embed.weight.grad).all()
