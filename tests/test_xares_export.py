"""X-ARES plug-ins: the generated module passes the real X-ARES checker and loading rules."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

import harmonia
from harmonia.xares_export import class_name_for, export_xares

FIX = Path(__file__).parent / "fixtures"
BEATS_A = FIX / "beats" / "beats_ms_iter3_small.pt"
BEATS_B = FIX / "beats" / "openbeats_small_ssl.pt"
DASHENG = FIX / "dasheng" / "model_a.pt"
SPEC = f"{BEATS_A}+{BEATS_B}+{DASHENG}"


def import_module(path: Path):
    spec = importlib.util.spec_from_file_location(f"xares_plugin_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def encoder_attributes(module) -> list[str]:
    """X-ARES's loading rule: exactly one module attribute whose name ends in 'Encoder'."""
    return [n for n in dir(module) if n.endswith("Encoder")]


@pytest.fixture(scope="module")
def plugin(tmp_path_factory):
    out = tmp_path_factory.mktemp("xares") / "my_encoder.py"
    export_xares(SPEC, out, {"align": "linear"})
    return out


def test_generated_module_passes_the_real_checker(plugin, check_audio_encoder):
    module = import_module(plugin)
    names = encoder_attributes(module)
    assert len(names) == 1
    encoder = getattr(module, names[0])()  # zero-argument constructor
    assert check_audio_encoder(encoder) is True
    assert not encoder.encoder.training and not encoder.training
    assert (encoder.sampling_rate, encoder.output_dim, encoder.hop_size_in_ms) == (16000, 192, 20.0)


def test_output_matches_the_library_and_is_float32(plugin):
    module = import_module(plugin)
    encoder = getattr(module, encoder_attributes(module)[0])()
    wav = torch.randn(2, 50_000, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():  # how X-ARES calls it
        out = encoder(wav)
    assert out.dtype == torch.float32
    direct = harmonia.load_encoder(SPEC, align="linear")(wav)
    assert torch.equal(out, direct)


@pytest.mark.parametrize("seconds", [1.0, 3.125, 10.0, 12.5])
def test_hop_is_consistent_with_frame_count(plugin, seconds):
    """T' x hop must cover the clip to within one BEATs patch row (160 ms) plus the 25 ms window."""
    module = import_module(plugin)
    encoder = getattr(module, encoder_attributes(module)[0])()
    n = int(seconds * 16000)
    frames = encoder(torch.zeros(1, n) + 0.01).shape[1]
    covered_ms = frames * encoder.hop_size_in_ms
    assert seconds * 1000 - 185 <= covered_ms <= seconds * 1000


def test_no_other_encoder_names_are_imported(plugin):
    text = plugin.read_text()
    imports = [line for line in text.splitlines() if line.startswith(("import ", "from "))]
    assert imports == ["import json as _json", "import torch as _torch", "from harmonia import load_encoder as _load"]


def test_class_names_are_unique_per_model_and_options():
    assert class_name_for("cmu-aist-icme2025") == "HarmoniaCmuAistIcme2025Encoder"
    assert class_name_for("dasheng-1.2b") == "HarmoniaDasheng12bEncoder"
    names = {class_name_for("openbeats-large-i3"), class_name_for("openbeats-large-i3", {"layer": 12}),
             class_name_for("openbeats-large-i3", {"layer": 6}), class_name_for("openbeats-large-i2"),
             class_name_for(str(BEATS_A)), class_name_for(str(BEATS_B)), class_name_for(SPEC)}
    assert len(names) == 7 and all(n.endswith("Encoder") and n.isidentifier() for n in names)


def test_cli_xares_export_for_a_registry_name_writes_a_loadable_module(tmp_path, monkeypatch, check_audio_encoder):
    """The plug-in of a registry name loads it at construction (here from a local copy via the
    environment variable of `beats-iter3`)."""
    from harmonia.cli import main

    monkeypatch.setenv("HARMONIA_BEATS_ITER3", str(BEATS_A))
    out = tmp_path / "beats_iter3_encoder.py"
    assert main(["xares-export", "--model", "beats-iter3", "--out", str(out)]) == 0
    module = import_module(out)
    assert encoder_attributes(module) == ["HarmoniaBeatsIter3Encoder"]
    assert module.SOURCE == "beats-iter3"
    assert check_audio_encoder(module.HarmoniaBeatsIter3Encoder()) is True


def test_bad_output_names_are_refused(tmp_path):
    with pytest.raises(ValueError, match="my_encoder.py"):
        export_xares(str(BEATS_A), tmp_path / "my-encoder.py")
    with pytest.raises(ValueError, match="ending in 'Encoder'"):
        export_xares(str(BEATS_A), tmp_path / "m.py", class_name="Model")


@pytest.mark.parametrize("name", ["torch.py", "json.py", "harmonia.py", "xares.py"])
def test_output_names_that_shadow_a_module_are_refused(tmp_path, name):
    """X-ARES imports the plug-in by name from its folder: a `torch.py` there would be imported by
    the plug-in's own `import torch` (and `harmonia.py` by its `from harmonia import ...`)."""
    with pytest.raises(ValueError, match=f"module name '{name[:-3]}' is already taken"):
        export_xares(str(BEATS_A), tmp_path / name)
    assert not (tmp_path / name).exists()


def test_re_exporting_over_the_plugin_in_the_working_folder_is_allowed(plugin, monkeypatch):
    monkeypatch.chdir(plugin.parent)
    monkeypatch.syspath_prepend(str(plugin.parent))  # as under `python -m xares.run` from that folder
    sys.modules.pop("my_encoder", None)
    assert export_xares(str(BEATS_A), plugin.name).resolve() == plugin.resolve()
    export_xares(SPEC, plugin, {"align": "linear"})  # as the fixture wrote it, for the other tests


def test_xares_run_style_import_by_relative_module_path(plugin, monkeypatch):
    """X-ARES turns `my_encoder.py` into a module name relative to its working directory."""
    monkeypatch.chdir(plugin.parent)
    monkeypatch.syspath_prepend(str(plugin.parent))
    sys.modules.pop("my_encoder", None)
    module = importlib.import_module("my_encoder")
    assert len(encoder_attributes(module)) == 1
    sys.modules.pop("my_encoder", None)


# Checkpoint names that would break out of a string literal or a docstring if pasted into source.
CRAFTED_NAMES = [
    'm"""+__import__("os").system("touch PWNED")+""".pt',
    "m'''+__import__('os').system('touch PWNED')+'''.pt",
    'back\\slash\\"+__import__("os").system("touch PWNED")#.pt',
    'new\nline"\n__import__("os").system("touch PWNED")\n#.pt',
    "ünïcödé \u2028 \U0001f3b5 {OPTIONS}.pt",
]


@pytest.mark.parametrize("name", CRAFTED_NAMES)
def test_crafted_checkpoint_names_cannot_inject_code(tmp_path, monkeypatch, name):
    """The source path is data, never code: importing the plug-in runs nothing and it still loads
    the right file and passes the X-ARES checker."""
    from xares.audio_encoder_checker import check_audio_encoder

    ckpt = tmp_path / name
    ckpt.write_bytes(BEATS_A.read_bytes())
    out = tmp_path / "crafted_encoder.py"
    export_xares(str(ckpt), out, {"dtype": "float32"})
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)  # where an injected `touch PWNED` would land
    module = import_module(out)
    assert not (work / "PWNED").exists() and not (tmp_path / "PWNED").exists()
    assert module.SOURCE == str(ckpt.resolve()) and module.OPTIONS == {"dtype": "float32"}
    names = encoder_attributes(module)
    assert len(names) == 1
    encoder = getattr(module, names[0])()
    assert check_audio_encoder(encoder) is True
    wav = torch.randn(1, 16000, generator=torch.Generator().manual_seed(1))
    assert torch.equal(encoder(wav), harmonia.load_encoder(BEATS_A)(wav))
