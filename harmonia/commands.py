"""Encoder subcommands: `encode`, `info`, `list`, `convert`, `bench`."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

from harmonia.cli_args import (
    add_allow_partial,
    device,
    partial_exit,
    positive_float,
    positive_int,
    report_failures,
    seconds,
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("encode", help="encode audio files to DIR/<stem>.npy (T', D) each")
    _model_args(p)
    p.add_argument("--batch-size", type=positive_int, default=1, help="files encoded together (exact masking)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("files", nargs="+", help="audio files (wav, flac, ogg, mp3; any rate, any channels)")
    add_allow_partial(p)
    p.set_defaults(func=cmd_encode)

    p = sub.add_parser("info", help="print an encoder's family, config, size, hop and output dim")
    p.add_argument("source", help="checkpoint path, directory, registry name or HF repo id")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("convert", help="write a checkpoint in harmonia's format (config.json + model.safetensors)")
    p.add_argument("source")
    p.add_argument("out_dir")
    p.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default=None)
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("bench", help="throughput and peak memory of an encoder (--model), or speed and MFU of a "
                                     "pre-training step (--pretrain RECIPE), as one JSON line")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--model", help="encoder to time: checkpoint, directory, registry name or a+b+c")
    what.add_argument("--pretrain", metavar="RECIPE",
                      help="time the pre-training step of this recipe (beats_base, beats_large_*, beats_tiny_debug)")
    p.add_argument("--seconds", type=seconds, default=10.0, help="clip length")
    p.add_argument("--batch", type=positive_int, default=1)
    p.add_argument("--repeats", type=positive_int, default=5, help="timed encodes, or timed pre-training steps")
    p.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default=None,
                   help="--model: weight dtype (default float32); --pretrain: bfloat16 = bf16 autocast (the "
                        "default on CUDA), float32 = none (the default on CPU)")
    p.add_argument("--device", type=device, default="cpu")
    p.add_argument("--threads", type=positive_int, default=None)
    p.add_argument("--quantize", choices=["int8"], default=None, help="CPU only: dynamic int8 linear layers")
    p.add_argument("--compile", action="store_true", help="torch.compile the transformer blocks")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="--pretrain: recipe overrides, e.g. --set model.encoder.encoder_layers=2")
    p.add_argument("--peak-tflops", type=positive_float, default=None,
                   help="--pretrain: the MFU denominator (default: the GPU's bf16 peak; none on CPU)")
    p.set_defaults(func=cmd_bench)


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="checkpoint path, directory, registry name, HF repo id, or a+b+c")
    p.add_argument("--layout", choices=["flat", "mean", "concat"], default=None, help="BEATs output layout")
    p.add_argument("--layer", type=int, default=None,
                   help="state after N transformer layers (default: last; negative counts from the end)")
    p.add_argument("--chunk-seconds", type=seconds, default=None, help="long-input chunk length (default 10 s)")
    p.add_argument("--device", type=device, default="cpu")
    p.add_argument("--beats-config", default=None, help="JSON/YAML file with the BEATs cfg of a bare state dict")
    p.add_argument("--align", choices=["nearest", "linear"], default=None,
                   help="ensembles (a+b+c or a named one): how member frames are resampled to the reference's")
    p.add_argument("--fuse", choices=["concat", "mean"], default=None, help="ensembles: concatenate or average")
    p.add_argument("--reference", type=int, default=None,
                   help="ensembles: index of the member whose frame grid is used")


def load_from_args(args: argparse.Namespace):
    from harmonia import load_encoder

    options: dict = {}
    for name in ("layout", "layer", "chunk_seconds", "align", "fuse", "reference"):
        if getattr(args, name, None) is not None:
            options[name] = getattr(args, name)
    if getattr(args, "beats_config", None):
        import yaml

        try:
            options["beats_config"] = yaml.safe_load(Path(args.beats_config).read_text())
        except yaml.YAMLError as e:
            raise ValueError(f"--beats-config {args.beats_config}: not valid JSON/YAML ({e}); expected a mapping "
                             "of BEATs config fields") from None
    if getattr(args, "device", "cpu") != "cpu":
        options["device"] = args.device
    with flags_not_taken(args.model, options):
        return load_encoder(args.model, **options)


@contextlib.contextmanager
def flags_not_taken(model: str, options: dict):
    """A model that does not take an option given on the command line (e.g. --reference for a
    single model, --layout for Dasheng) raises TypeError in the library: for the CLI that is a user
    error naming the flag."""
    try:
        yield
    except TypeError as e:
        given = [name for name in options if repr(name) in str(e)]  # the library names what it does not take
        if not given:
            raise
        flags = ", ".join("--" + name.replace("_", "-") for name in given)
        raise ValueError(f"--model {model}: {flags} does not apply to this model ({e}); leave it out") from None


def check_output_dir(path: str | Path, flag: str = "--out") -> Path:
    """Refuse an output folder path that exists but is not a folder (before any slow work)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"{flag} {path}: exists and is not a directory; expected a folder (created "
                                 "when missing): remove the file or choose another path")
    return path


def output_dir(path: str | Path, flag: str = "--out") -> Path:
    """Create an output folder (with parents); a path that exists but is not a folder is refused."""
    path = check_output_dir(path, flag)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _save_npy_atomic(path: Path, array: np.ndarray) -> None:
    from harmonia.io import atomic_write

    with atomic_write(path, "wb") as f:
        np.save(f, array)


def cmd_encode(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from harmonia.audio import AudioError, load_audio, pad_batch
    from harmonia.io import remove_stale_temps

    check_output_dir(args.out)
    encoder = load_from_args(args)  # a model that cannot be loaded leaves no empty --out folder behind
    out = output_dir(args.out)
    remove_stale_temps(out)  # left by a killed or failed earlier run
    # one file named twice (a shell glob and an explicit name, ./a.wav and a.wav) is encoded once
    files, seen = [], set()
    for f in args.files:
        if os.path.realpath(f) not in seen:
            seen.add(os.path.realpath(f))
            files.append(Path(f))
    stems: dict[str, Path] = {}
    failures: list[tuple[str, str]] = []
    for f in files:  # two inputs with one stem would overwrite each other: refuse the second
        if f.stem in stems:
            failures.append((str(f), f"same output name {f.stem}.npy as {stems[f.stem]}; rename one of them"))
        else:
            stems[f.stem] = f
    todo = [f for f in files if stems.get(f.stem) is f]
    bar = tqdm(total=len(todo), unit="file", desc="encode", file=sys.stderr)
    for i in range(0, len(todo), args.batch_size):
        batch, wavs = [], []
        for f in todo[i: i + args.batch_size]:
            try:
                wavs.append(load_audio(f))
                batch.append(f)
            except AudioError as e:
                failures.append((str(f), str(e)))
                bar.update(1)
        if not batch:
            continue
        try:
            wav, lengths = pad_batch(wavs)
            result = encoder.encode(wav, lengths)
            for j, f in enumerate(batch):
                frames = result.frames[j, : int(result.lengths[j])].float().cpu().numpy()
                if not np.isfinite(frames).all():  # e.g. float audio far outside [-1, 1] overflows the features
                    failures.append((str(f), f"the encoder produced NaN or infinite frames (input peak "
                                             f"{float(wavs[j].abs().max()):.3g}; expected audio within about [-1, 1]): "
                                             "normalise the file; nothing was written for it"))
                    continue
                _save_npy_atomic(out / f"{f.stem}.npy", frames)
        except Exception as e:  # keep going: report at the end
            failures.extend((str(f), f"encoding failed: {e}") for f in batch)
        bar.update(len(batch))
    bar.close()
    done = len(files) - len(failures)
    print(f"encoded {done}/{len(files)} files to {out}", file=sys.stderr)
    report_failures(failures, "file(s) failed")
    return partial_exit(len(failures), args)


def describe(encoder) -> dict:
    n_params = sum(p.numel() for p in encoder.parameters())
    info = {"class": type(encoder).__name__, "parameters": n_params, "output_dim": encoder.output_dim,
            "hop_size_in_ms": encoder.hop_size_in_ms, "sampling_rate": encoder.sampling_rate,
            "dtype": str(encoder.dtype).replace("torch.", "")}
    if hasattr(encoder, "export_config"):
        info.update(encoder.export_config())
    return info


def cmd_info(args: argparse.Namespace) -> int:
    from harmonia import load_encoder

    info = describe(load_encoder(args.source))
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return 0
    for key in ("family", "class", "parameters", "output_dim", "hop_size_in_ms", "sampling_rate", "dtype"):
        if key in info:
            value = f"{info[key]:,}" if key == "parameters" else info[key]
            print(f"{key:>15}: {value}")
    for key in ("options", "config"):
        if key in info:
            print(f"{key:>15}:")
            for k, v in info[key].items() if isinstance(info[key], dict) else []:
                print(f"{'':>17}{k} = {v}")
    for name, member in zip(info.get("names") or [], info.get("members") or []):  # ensembles
        print(f"{'member':>15}: {name} ({member['family']}) " + ", ".join(f"{k}={v}" for k, v in member["options"].items()))
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from harmonia import load_encoder
    from harmonia.hub import save_harmonia

    options = {"dtype": getattr(torch, args.dtype)} if args.dtype else {}
    check_output_dir(args.out_dir, "OUT_DIR")
    encoder = load_encoder(args.source, **options)
    out_dir = output_dir(args.out_dir, "OUT_DIR")
    if not hasattr(encoder, "export_config"):
        raise ValueError(f"{args.source}: a {type(encoder).__name__} cannot be exported to harmonia's format; "
                         "convert its members one at a time")
    out = save_harmonia(encoder, out_dir)
    print(f"wrote {out / 'config.json'} and {out / 'model.safetensors'}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from harmonia.bench import bench_encoder, bench_pretrain

    if args.pretrain:
        for flag, given in (("--quantize", args.quantize), ("--compile", args.compile)):
            if given:
                raise ValueError(f"{flag} applies to --model, not to --pretrain")
        if args.dtype == "float16":
            raise ValueError("--pretrain runs float32 or bf16 autocast (--dtype bfloat16); float16 needs loss "
                             "scaling, which the training loop does not use")
        bf16 = None if args.dtype is None else args.dtype == "bfloat16"
        print(json.dumps(bench_pretrain(args.pretrain, args.overrides, batch=args.batch, seconds=args.seconds,
                                        steps=args.repeats, device=args.device, bf16=bf16,
                                        peak=args.peak_tflops, threads=args.threads)))
        return 0
    if args.overrides or args.peak_tflops:
        raise ValueError("--set and --peak-tflops apply to --pretrain, not to --model")
    print(json.dumps(bench_encoder(args.model, seconds=args.seconds, batch=args.batch, repeats=args.repeats,
                                   dtype=args.dtype or "float32", device=args.device, threads=args.threads,
                                   quantize=args.quantize, compile=args.compile)))
    return 0
