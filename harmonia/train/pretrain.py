"""BEATs pre-training loop. Reads top to bottom: setup → resume → data → targets → model →
optimiser → steps (fbank on the fly, frozen tokenizer labels in the same step, masked-patch loss,
accumulation, clipping) → logs → atomic checkpoints → export.

Run: `harmonia pretrain RECIPE --set key=value ...`, or multi-process
`torchrun --nproc_per_node N -m harmonia.train.pretrain RECIPE --set ...`.
A run resumes from the latest checkpoint in `run.out_dir` and then continues with identical losses.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from harmonia.data.loader import build_loader
from harmonia.data.mixture import RATIO_ORDER
from harmonia.encoder import tune_allocator
from harmonia.layers.frontend import beats_fbank
from harmonia.models.beats import BeatsConfig, exact_patch_mask
from harmonia.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from harmonia.train.config import ConfigError, PretrainConfig
from harmonia.train.distributed import (
    DistInfo,
    all_reduce_sum,
    barrier,
    gather_objects,
    init_distributed,
    unwrap,
    wrap_model,
)
from harmonia.train.objective import MaskedPatchObjective
from harmonia.train.optim import build_optimizer, build_scheduler
from harmonia.train.tokenizers import (
    RandomProjectionTokenizer,
    TeacherTargets,
    VQKDTokenizer,
    load_checkpoint_tokenizer,
    load_teacher,
)

CHECKPOINT_VERSION = 1


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


def _full_state(model: nn.Module, optimizer: torch.optim.Optimizer, parallel: str) -> tuple[dict, dict]:
    """Unsharded model and optimiser state dicts (a collective under FSDP: call on every rank)."""
    if parallel == "fsdp" and dist.is_initialized():
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

        return get_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return unwrap(model).state_dict(), optimizer.state_dict()


def _load_optimizer(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict, parallel: str) -> None:
    if parallel == "fsdp" and dist.is_initialized():
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))
    else:
        optimizer.load_state_dict(state)


def export_model(model: nn.Module, cfg: PretrainConfig, out_dir: str | Path) -> Path:
    """Write the trained encoder (mlm) or tokenizer (vqkd) in harmonia's format."""
    from harmonia.encoders.beats import BeatsEncoder
    from harmonia.hub import save_harmonia

    inner = copy.deepcopy(model).cpu().float()
    backbone = inner.to_tokenizer_model() if isinstance(inner, VQKDTokenizer) else inner.backbone
    return save_harmonia(BeatsEncoder(backbone.eval()), out_dir)


def pretrain(cfg: PretrainConfig, export: str | Path | None = None) -> dict:
    """Train (or resume) per `cfg`; returns the last logged record. Multi-process under torchrun."""
    # -- setup ------------------------------------------------------------------------------------
    cfg.validate()
    tune_allocator()  # large activations re-fault their pages every step otherwise (~15 % on CPU)
    info: DistInfo = init_distributed()
    run, out = cfg.run, Path(cfg.run.out_dir)
    use_bf16 = run.precision == "bf16" or (run.precision == "auto" and info.device.type == "cuda")
    autocast = (torch.autocast(info.device.type, dtype=torch.bfloat16) if use_bf16
                else contextlib.nullcontext())
    torch.manual_seed(run.seed)  # identical initial weights on every rank

    # -- resume -----------------------------------------------------------------------------------
    ckpt_path = latest_checkpoint(out)
    ckpt = load_checkpoint(ckpt_path) if ckpt_path else None
    if ckpt is not None and ckpt["world_size"] != info.world_size:
        raise ConfigError(f"{ckpt_path}: written by {ckpt['world_size']} processes, resumed with "
                          f"{info.world_size}; resume with the same number (the data position is per rank)")

    # -- data -------------------------------------------------------------------------------------
    d = cfg.data
    loader = build_loader(d.shards, d.ratio, d.batch_size, d.seed, info.rank, info.world_size, d.num_workers,
                          d.corpus_weights, state=ckpt["data"][info.rank] if ckpt else None,
                          crop_seconds=d.crop_seconds)

    # -- targets and model ------------------------------------------------------------------------
    targets = build_targets(cfg).to(info.device)
    model = build_task(cfg, targets)
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
    model.to(info.device)
    model_w = wrap_model(model, info, run.parallel)

    # -- optimiser --------------------------------------------------------------------------------
    optimizer = build_optimizer(model_w, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.optim, run.max_steps)
    mask_gen = torch.Generator().manual_seed(run.seed * 7919 + info.rank)
    torch.manual_seed(run.seed * 104729 + info.rank)  # dropout differs per rank
    step = 0
    if ckpt is not None:
        _load_optimizer(model_w, optimizer, ckpt["optimizer"], run.parallel)
        scheduler.load_state_dict(ckpt["scheduler"])
        rng = ckpt["rng"][info.rank]
        mask_gen.set_state(rng["mask"])
        torch.set_rng_state(rng["torch"])
        if info.device.type == "cuda" and rng.get("cuda") is not None:
            torch.cuda.set_rng_state(rng["cuda"])
        step = int(ckpt["step"])

    # -- logging ----------------------------------------------------------------------------------
    log_file = None
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=1))
        log_file = open(out / "log.jsonl", "a")  # noqa: SIM115 - closed at the end
        log_file.write(json.dumps({"event": "resume" if ckpt else "start", "step": step,
                                   "world_size": info.world_size}) + "\n")
    bar = None
    if info.is_main and run.progress:
        from tqdm import tqdm

        bar = tqdm(total=run.max_steps, initial=step, desc=cfg.name, unit="step", dynamic_ncols=True)

    # -- steps ------------------------------------------------------------------------------------
    it = iter(loader)
    record: dict = {}
    fb_mean, fb_std = BeatsConfig(**cfg.model.encoder).fbank_mean, BeatsConfig(**cfg.model.encoder).fbank_std
    accum = cfg.optim.grad_accum
    model_w.train()
    while step < run.max_steps:
        t0 = time.perf_counter()
        sums = torch.zeros(4, dtype=torch.float64)  # loss, correct|cosine, masked|valid, clips
        for micro in range(accum):
            batch = next(it)
            wav_BN, lengths_B = batch["wav"].to(info.device), batch["lengths"]
            fbank_BTF = beats_fbank(wav_BN, fb_mean, fb_std)
            padding_mask_BP = exact_patch_mask(lengths_B, fbank_BTF.shape[1] // 16).to(info.device)
            with torch.no_grad(), autocast:
                target = targets.labels(fbank_BTF, padding_mask_BP)
            sync = (model_w.no_sync() if micro < accum - 1 and isinstance(model_w, nn.parallel.DistributedDataParallel)
                    else contextlib.nullcontext())
            with sync:
                with autocast:
                    loss, stats = model_w(fbank_BTF, padding_mask_BP, target, mask_gen)
                (loss / accum).backward()
            num, den = (stats["correct"], stats["masked"]) if "correct" in stats else (stats["cosine"], stats["valid"])
            sums += torch.tensor([loss.item(), float(num), float(den), wav_BN.shape[0]], dtype=torch.float64)
        grad_norm = torch.nn.utils.clip_grad_norm_(model_w.parameters(), cfg.optim.clip_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1

        # -- log ----------------------------------------------------------------------------------
        hours = torch.tensor([loader.domain_hours().get(dn, 0.0) for dn in RATIO_ORDER], dtype=torch.float64)
        all_reduce_sum(sums)
        all_reduce_sum(hours)
        dt = time.perf_counter() - t0
        metric = "acc" if cfg.model.task == "mlm" else "cosine"
        record = {"step": step, "loss": sums[0].item() / (accum * info.world_size),
                  metric: sums[1].item() / max(sums[2].item(), 1.0), "lr": scheduler.get_last_lr()[0],
                  "grad_norm": float(grad_norm), "clips_per_s": sums[3].item() / dt,
                  "hours": {dn: round(h, 6) for dn, h in zip(RATIO_ORDER, hours.tolist())}}
        if not math.isfinite(record["loss"]):
            raise FloatingPointError(f"step {step}: loss is {record['loss']}; lower optim.lr or check the data")
        if log_file and (step % run.log_every == 0 or step == run.max_steps):
            log_file.write(json.dumps(record) + "\n")
            log_file.flush()
        if bar is not None:
            bar.update()
            bar.set_postfix(loss=f"{record['loss']:.3f}", **{metric: f"{record[metric]:.3f}"})

        # -- checkpoint ---------------------------------------------------------------------------
        if step % run.ckpt_every == 0 or step == run.max_steps:
            model_state, optim_state = _full_state(model_w, optimizer, run.parallel)
            rng = {"mask": mask_gen.get_state(), "torch": torch.get_rng_state(),
                   "cuda": torch.cuda.get_rng_state() if info.device.type == "cuda" else None}
            data_states, rng_states = gather_objects(loader.state_dict()), gather_objects(rng)
            if info.is_main:
                save_checkpoint({"version": CHECKPOINT_VERSION, "step": step, "config": cfg.to_dict(),
                                 "world_size": info.world_size, "model": model_state, "optimizer": optim_state,
                                 "scheduler": scheduler.state_dict(), "data": data_states, "rng": rng_states},
                                out, step, run.keep_last)
            barrier()

    # -- export -----------------------------------------------------------------------------------
    if bar is not None:
        bar.close()
    if export is not None:
        if run.parallel == "fsdp" and dist.is_initialized():
            state, _ = _full_state(model_w, optimizer, run.parallel)  # collective; full only on rank 0
            if info.is_main:
                model = build_task(cfg, targets)
                model.load_state_dict(state)
        if info.is_main:
            export_model(unwrap(model), cfg, export)
        barrier()
    if log_file:
        log_file.close()
    return record


def iterate(cfg: PretrainConfig, iterations: int, root: str | Path, tokenizer_overrides: dict | None = None) -> Path:
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
        pretrain(enc_cfg, export=encoder_dir)
        if k == iterations:
            return encoder_dir
        tok_cfg = copy.deepcopy(cfg)
        tok_cfg.model.task = "vqkd"
        tok_cfg.tokenizer.kind, tok_cfg.tokenizer.path = "teacher", str(encoder_dir)
        tok_cfg.run.out_dir = str(root / f"iter{k}" / "tokenizer")
        for key, value in (tokenizer_overrides or {}).items():
            set_value(tok_cfg, key, value)
        tok_path = root / f"iter{k}" / "tokenizer" / "export"
        pretrain(tok_cfg, export=tok_path)
    raise ValueError(f"iterations={iterations}: expected at least 1")


def main(argv: list[str] | None = None) -> int:
    """Entry point for `python -m harmonia.train.pretrain` (and torchrun)."""
    import argparse

    from harmonia.train.cli import add_arguments, run_from_args

    parser = argparse.ArgumentParser(prog="harmonia.train.pretrain", description=__doc__.split("\n")[0])
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
