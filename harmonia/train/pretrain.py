"""BEATs pre-training on the shared Trainer (`harmonia.train.trainer`): the task (targets, model,
optimiser, data, one micro-batch's loss), `pretrain()` and the BEATs iteration driver `iterate()`.

Run: `harmonia pretrain RECIPE --set key=value ...`, or multi-process
`torchrun --nproc_per_node N -m harmonia pretrain RECIPE --set ...`.
A run resumes from the latest intact checkpoint in `run.out_dir` and then continues with identical
losses; a changed setting is refused unless `--override-resume-config` is given.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from harmonia.layers.frontend import beats_fbank
from harmonia.models.beats import BeatsConfig, TransformerLayer, exact_patch_mask
from harmonia.train.config import ConfigError, PretrainConfig
from harmonia.train.objective import MaskedPatchObjective
from harmonia.train.optim import build_optimizer
from harmonia.train.tokenizers import (
    RandomProjectionTokenizer,
    TeacherTargets,
    VQKDTokenizer,
    load_checkpoint_tokenizer,
    load_teacher,
)
from harmonia.train.trainer import Task, Trainer


def build_targets(cfg: PretrainConfig) -> nn.Module:
    """The frozen module whose `labels(fbank, padding_mask)` gives each step's targets."""
    m, t = cfg.model, cfg.tokenizer
    if m.task == "vqkd":
        return TeacherTargets(load_teacher(t.path))
    if t.kind == "random":
        enc = BeatsConfig(**m.encoder)
        return RandomProjectionTokenizer(enc.input_patch_size, enc.embed_dim, m.codebook_size, t.quant_dim, t.seed)
    tok = load_checkpoint_tokenizer(t.path)
    if tok.cfg.quant_n != m.codebook_size:
        raise ConfigError(f"model.codebook_size={m.codebook_size} but the tokenizer {t.path} has "
                          f"{tok.cfg.quant_n} codes; --set model.codebook_size={tok.cfg.quant_n}")
    return tok


def build_task(cfg: PretrainConfig, targets: nn.Module) -> nn.Module:
    m = cfg.model
    enc = BeatsConfig(**m.encoder)
    if m.task == "vqkd":
        teacher_dim = targets.teacher.cfg.encoder_embed_dim
        return VQKDTokenizer(enc, teacher_dim, m.codebook_size, m.quant_dim, m.decoder_layers, m.vq_beta, m.vq_decay)
    return MaskedPatchObjective(enc, m.decoder_embed_dim, m.decoder_layers, m.codebook_size, m.mask_ratio,
                                m.label_smoothing)


def export_model(model: nn.Module, out_dir: str | Path) -> Path:
    """Write the trained encoder (mlm) or tokenizer (vqkd) in harmonia's format."""
    from harmonia.encoders.beats import BeatsEncoder
    from harmonia.hub import save_harmonia

    inner = copy.deepcopy(model).cpu().float()
    backbone = inner.to_tokenizer_model() if isinstance(inner, VQKDTokenizer) else inner.backbone
    return save_harmonia(BeatsEncoder(backbone.eval()), out_dir)


class BeatsTask(Task):
    """BEATs pre-training for the Trainer: masked acoustic-token prediction (mlm) against a frozen
    tokenizer's labels, or VQ-KD tokenizer distillation from a teacher encoder (vqkd). Each
    micro-batch: fbank on the fly, the frozen targets in the same step, the masked-patch loss."""

    name = "beats"
    # Cannot change mid-run: the architecture, what the labels mean, and the data stream's identity
    # (the loader's position is only valid for the same batch size, seed and workers).
    frozen = ("model.task", "model.encoder", "model.decoder_embed_dim", "model.decoder_layers",
              "model.codebook_size", "model.quant_dim", "tokenizer", "data.batch_size", "data.seed",
              "data.num_workers", "run.seed")
    fsdp_units = (TransformerLayer,)

    def __init__(self, cfg: PretrainConfig) -> None:
        self.cfg = cfg
        enc = BeatsConfig(**cfg.model.encoder)
        self.fbank_mean, self.fbank_std = enc.fbank_mean, enc.fbank_std
        self.targets: nn.Module | None = None
        self.mask_gen: torch.Generator | None = None

    def build_model(self, device: torch.device) -> nn.Module:
        if self.targets is None:
            self.targets = build_targets(self.cfg).to(device)
        return build_task(self.cfg, self.targets)

    def build_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        return build_optimizer(model, self.cfg.optim)

    def make_generators(self, rank: int) -> dict[str, torch.Generator]:
        # 7919 (the 1000th prime) only keeps each (seed, rank) mask stream apart from the others.
        self.mask_gen = torch.Generator().manual_seed(self.cfg.run.seed * 7919 + rank)
        return {"mask": self.mask_gen}

    def forward(self, model: nn.Module, batch: dict, device: torch.device, autocast) -> tuple[torch.Tensor, dict]:
        wav_BN, lengths_B = batch["wav"].to(device), batch["lengths"]
        fbank_BTF = beats_fbank(wav_BN, self.fbank_mean, self.fbank_std)  # fp32, outside autocast
        padding_mask_BP = exact_patch_mask(lengths_B, fbank_BTF.shape[1] // 16).to(device)
        with torch.no_grad(), autocast:
            target = self.targets.labels(fbank_BTF, padding_mask_BP)
        with autocast:
            loss, stats = model(fbank_BTF, padding_mask_BP, target, self.mask_gen)
        if "correct" in stats:
            return loss, {"num": stats["correct"], "den": stats["masked"]}
        return loss, {"num": stats["cosine"], "den": stats["valid"]}

    def metrics(self, sums: dict[str, float]) -> dict[str, float]:
        name = "acc" if self.cfg.model.task == "mlm" else "cosine"
        return {name: sums["num"] / max(sums["den"], 1.0)}

    def export(self, model: nn.Module, out: Path) -> Path:
        return export_model(model, out)


def pretrain(cfg: PretrainConfig, export: str | Path | None = None, override_resume_config: bool = False) -> dict:
    """Train (or resume) per `cfg`; returns the last logged record. Multi-process under torchrun.

    Resuming with a config that differs from the checkpoint's is refused unless
    `override_resume_config` (then the changes apply from the resumed step on; see Trainer)."""
    cfg.validate()
    return Trainer(BeatsTask(cfg), cfg, override_resume_config).fit(export)


def iterate(cfg: PretrainConfig, iterations: int, root: str | Path, tokenizer_overrides: dict | None = None,
            override_resume_config: bool = False) -> Path:
    """The BEATs iteration driver: tokenizer → encoder → next tokenizer → ...

    Iteration 1 uses `cfg.tokenizer` (random projection, or a released checkpoint to bootstrap as
    the paper did). After each encoder but the last, a VQ-KD tokenizer is distilled from it (teacher
    = that encoder) and labels the next iteration. Returns the last encoder's export folder."""
    from harmonia.train.config import set_value

    root = Path(root)
    tok_path = None
    for k in range(1, iterations + 1):
        enc_cfg = copy.deepcopy(cfg)
        enc_cfg.run.out_dir = str(root / f"iter{k}" / "encoder")
        if tok_path is not None:
            enc_cfg.tokenizer.kind, enc_cfg.tokenizer.path = "checkpoint", str(tok_path)
        encoder_dir = root / f"iter{k}" / "encoder" / "export"
        pretrain(enc_cfg, export=encoder_dir, override_resume_config=override_resume_config)
        if k == iterations:
            return encoder_dir
        tok_cfg = copy.deepcopy(cfg)
        tok_cfg.model.task = "vqkd"
        tok_cfg.tokenizer.kind, tok_cfg.tokenizer.path = "teacher", str(encoder_dir)
        tok_cfg.run.out_dir = str(root / f"iter{k}" / "tokenizer")
        for key, value in (tokenizer_overrides or {}).items():
            set_value(tok_cfg, key, value)
        tok_path = root / f"iter{k}" / "tokenizer" / "export"
        pretrain(tok_cfg, export=tok_path, override_resume_config=override_resume_config)
    raise ValueError(f"iterations={iterations}: expected at least 1")


if __name__ == "__main__":  # the entry point moved: say so instead of exiting 0 without training
    raise SystemExit("run `harmonia pretrain RECIPE ...` (several processes: `torchrun --nproc_per_node N "
                     "-m harmonia pretrain RECIPE ...`)")
