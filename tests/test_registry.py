"""Registry of named checkpoints: completeness (offline), downloads through a fake Hugging Face
cache laid out like huggingface_hub's, checkpoint discovery in nested snapshots, offline errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import yaml

import harmonia
from harmonia.hub import CheckpointError, DownloadError, find_checkpoint, load_snapshot, parse_member
from harmonia.registry import REGISTRY

FIX = Path(__file__).parent / "fixtures"
SSL = FIX / "beats" / "openbeats_small_ssl.pt"
ESPNET = FIX / "beats" / "openbeats_small_espnet_prefixed.pth"
MS = FIX / "beats" / "beats_ms_iter3_small.pt"
DASHENG_HF = FIX / "dasheng" / "model_a_hf"
COMMIT = "0123456789abcdef0123456789abcdef01234567"

# name -> (repo id, output_dim, hop ms, frames per 10 s, parameters), typed from the brief and the specs
EXPECTED = {
    **{f"openbeats-base-i{i}": (f"shikhar7ssu/OpenBEATs-Base-i{i}", 768, 20.0, 496, 90_311_792) for i in (1, 2, 3)},
    **{f"openbeats-large-i{i}": (f"shikhar7ssu/OpenBEATs-Large-i{i}", 1024, 20.0, 496, 311_376_576) for i in (1, 2, 3)},
    "openbeats-icme": ("shikhar7ssu/OpenBEATs-ICME", 1024, 20.0, 496, 311_376_576),
    "openbeats-icme-sound": ("shikhar7ssu/OpenBEATs-ICME-SOUND", 1024, 20.0, 496, 311_376_576),
    "dasheng-base": ("mispeech/dasheng-base", 768, 40.0, 250, 85_447_808),
    "dasheng-0.6b": ("mispeech/dasheng-0.6B", 1280, 40.0, 250, 630_333_568),
    "dasheng-1.2b": ("mispeech/dasheng-1.2B", 1536, 40.0, 250, 1_134_047_360),
    "beats-iter3": (None, 768, 20.0, 496, 90_311_792),
    "cmu-aist-icme2025": (None, 1024 + 1024 + 1536, 20.0, 496, 2 * 311_376_576 + 1_134_047_360),
}


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Never reach the Hub from tests: offline mode as HF_HUB_OFFLINE=1 sets it."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


def fake_cache(cache: Path, repo_id: str, files: dict[str, Path], revision: str = COMMIT) -> Path:
    """A Hugging Face cache entry: blobs/, snapshots/<commit>/<path> -> ../blobs/<hash>, refs/main."""
    repo_dir = cache / f"models--{repo_id.replace('/', '--')}"
    snap = repo_dir / "snapshots" / revision
    for i, (rel, src) in enumerate(files.items()):
        blob = repo_dir / "blobs" / f"blob{i:04d}"
        blob.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, blob)
        dest = snap / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.symlink_to(Path("../" * (len(Path(rel).parts) + 1)) / "blobs" / blob.name)
    (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs" / "main").write_text(revision)
    return snap


def same_output(a, b) -> bool:
    wav = torch.randn(1, 16000, generator=torch.Generator().manual_seed(0)) * 0.1
    return torch.equal(a(wav), b(wav))


# -------------------------------------------------------------------------------------------------
# completeness, offline


def test_every_required_name_is_registered():
    assert set(EXPECTED) <= set(REGISTRY)
    assert harmonia.list_encoders() == sorted(REGISTRY)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_entry_resolves_config_and_contract_offline(name):
    entry = REGISTRY[name]
    repo, dim, hop, frames, params = EXPECTED[name]
    assert entry.repo_id == repo
    assert entry.licence and entry.paper and entry.description
    c = entry.contract
    assert (c.sampling_rate, c.output_dim, c.hop_size_in_ms, c.frames_per_10s, c.parameters) == (16000, dim, hop,
                                                                                                 frames, params)
    enc = entry.build_meta()  # architecture only: no weights, no download
    assert (enc.output_dim, enc.hop_size_in_ms, enc.num_frames(160_000)) == (dim, hop, frames)
    assert sum(p.numel() for p in enc.parameters()) == params


def test_recipes_and_registry_build_the_same_preset_architectures():
    """One source: the pre-training recipes build the architectures of the registry's releases."""
    from harmonia.models.beats import BeatsConfig, BeatsModel
    from harmonia.recipes.pretrain import beats_base, beats_large_balanced, beats_large_speech_heavy

    for recipe, name in ((beats_base, "openbeats-base-i1"), (beats_large_speech_heavy, "openbeats-icme"),
                         (beats_large_balanced, "openbeats-icme-sound")):
        with torch.device("meta"):
            model = BeatsModel(BeatsConfig(**recipe().model.encoder))
        assert sum(p.numel() for p in model.parameters()) == EXPECTED[name][4]


def test_dasheng_entries_have_zenodo_alternative_and_pinned_revision():
    for size in ("base", "0.6b", "1.2b"):
        e = REGISTRY[f"dasheng-{size}"]
        assert any("zenodo.org/records/11511780" in a for a in e.alternatives)
        assert e.revision is not None and len(e.revision) == 40


# -------------------------------------------------------------------------------------------------
# downloads through the Hugging Face cache


def test_openbeats_checkpoint_nested_deep_in_snapshot(tmp_path):
    fake_cache(tmp_path, "shikhar7ssu/OpenBEATs-ICME",
               {"exp/beats_large/ssl_train/epoch_latest.pt": SSL, "README.md": FIX / "beats" / "README.md"})
    enc = harmonia.load_encoder("openbeats-icme", cache_dir=tmp_path)
    assert same_output(enc, harmonia.load_encoder(SSL))


def test_dasheng_hf_layout_at_pinned_revision(tmp_path):
    rev = REGISTRY["dasheng-base"].revision
    fake_cache(tmp_path, "mispeech/dasheng-base",
               {f: DASHENG_HF / f for f in ("config.json", "model.safetensors", "preprocessor_config.json")},
               revision=rev)
    enc = harmonia.load_encoder("dasheng-base", cache_dir=tmp_path)
    assert same_output(enc, harmonia.load_encoder(DASHENG_HF))


def test_repo_id_goes_through_the_same_download(tmp_path):
    fake_cache(tmp_path, "someone/my-beats", {"a/b/c/model.pth": MS})
    assert same_output(harmonia.load_encoder("someone/my-beats", cache_dir=tmp_path), harmonia.load_encoder(MS))


def test_download_calls_snapshot_download(monkeypatch, tmp_path):
    """The real entry point users run is huggingface_hub.snapshot_download with the entry's repo,
    revision and file patterns; here it is replaced by a copy of the fixture."""
    import huggingface_hub

    calls = []

    def fake_snapshot_download(repo_id, revision=None, cache_dir=None, allow_patterns=None, **kw):
        calls.append((repo_id, revision, allow_patterns))
        dest = tmp_path / "snap" / "exp" / "x"
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(SSL, dest / "epoch_40.pt")
        return str(tmp_path / "snap")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    enc = harmonia.load_encoder("openbeats-large-i3")
    assert calls == [("shikhar7ssu/OpenBEATs-Large-i3", None, ["*config.yaml", "*epoch*.pt", "*.pth", "*.ckpt"])]
    assert same_output(enc, harmonia.load_encoder(SSL))


def test_offline_error_names_repository_and_local_path(tmp_path):
    with pytest.raises(DownloadError) as err:
        harmonia.load_encoder("openbeats-large-i2", cache_dir=tmp_path / "empty")
    msg = str(err.value)
    assert "shikhar7ssu/OpenBEATs-Large-i2" in msg
    assert "path='DIR'" in msg and "hf download shikhar7ssu/OpenBEATs-Large-i2" in msg
    with pytest.raises(DownloadError, match="zenodo.org/records/11511780/files/dasheng_12b.pt"):
        harmonia.load_encoder("dasheng-1.2b", cache_dir=tmp_path / "empty", local_files_only=True)


def test_no_public_host_entry_explains_local_path(monkeypatch):
    monkeypatch.delenv("HARMONIA_BEATS_ITER3", raising=False)
    with pytest.raises(DownloadError, match="no stable public host.*HARMONIA_BEATS_ITER3"):
        harmonia.load_encoder("beats-iter3")
    monkeypatch.setenv("HARMONIA_BEATS_ITER3", str(MS))
    assert same_output(harmonia.load_encoder("beats-iter3"), harmonia.load_encoder(MS))


def test_local_copy_instead_of_download(tmp_path):
    snap = tmp_path / "OpenBEATs-Large-i1" / "exp" / "deep"
    snap.mkdir(parents=True)
    shutil.copyfile(SSL, snap / "40epoch.pt")
    enc = harmonia.load_encoder("openbeats-large-i1", path=tmp_path / "OpenBEATs-Large-i1")
    assert same_output(enc, harmonia.load_encoder(SSL))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        harmonia.load_encoder("openbeats-large-i1", path=tmp_path / "missing")


def test_named_ensemble_from_local_copies(tmp_path):
    ens = harmonia.load_encoder("cmu-aist-icme2025", path=[SSL, MS, DASHENG_HF], align="linear")
    assert isinstance(ens, harmonia.EnsembleEncoder)
    assert ens.names == ["openbeats-icme", "openbeats-icme-sound", "dasheng-1.2b"]
    assert (ens.output_dim, ens.hop_size_in_ms, ens.align, ens.num_frames(160_000)) == (192, 20.0, "linear", 496)
    with pytest.raises(ValueError, match="one local copy per member"):
        harmonia.load_encoder("cmu-aist-icme2025", path=SSL)


# -------------------------------------------------------------------------------------------------
# checkpoint discovery


def test_find_checkpoint_rules(tmp_path):
    (tmp_path / "exp" / "a").mkdir(parents=True)
    (tmp_path / ".cache").mkdir()
    (tmp_path / ".cache" / "x.pt").write_bytes(b"")  # hidden folders are ignored
    (tmp_path / "exp" / "a" / "config.yaml").write_text("x: 1")
    (tmp_path / "exp" / "a" / "valid.acc.best.pth").write_bytes(b"")
    assert find_checkpoint(tmp_path) == tmp_path / "exp" / "a" / "valid.acc.best.pth"
    (tmp_path / "exp" / "a" / "checkpoint.pth").write_bytes(b"")  # a resume file: not a release name
    assert find_checkpoint(tmp_path) == tmp_path / "exp" / "a" / "valid.acc.best.pth"
    (tmp_path / "exp" / "a" / "40epoch.pth").write_bytes(b"")
    with pytest.raises(CheckpointError, match="several checkpoint files.*40epoch.pth"):
        find_checkpoint(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "README.md").write_text("hi")
    with pytest.raises(CheckpointError, match=r"no checkpoint file.*README.md"):
        find_checkpoint(empty)


def test_bare_espnet_state_dict_gets_config_yaml_from_elsewhere_in_snapshot(tmp_path):
    cfg = torch.load(SSL, weights_only=True)["cfg"]
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "config.yaml").write_text(yaml.safe_dump({"encoder_conf": {"beats_config": cfg}}))
    deep = tmp_path / "exp" / "run" / "checkpoints" / "final"
    deep.mkdir(parents=True)
    shutil.copyfile(ESPNET, deep / "valid.acc.ave.pth")
    enc = load_snapshot(tmp_path)
    assert same_output(enc, harmonia.load_encoder(SSL))


def test_member_spec_parsing():
    assert parse_member("openbeats-icme@12") == ("openbeats-icme", {"layer": 12})
    assert parse_member("dasheng-1.2b") == ("dasheng-1.2b", {})
    with pytest.raises(ValueError, match="SOURCE@LAYER"):
        parse_member("dasheng-1.2b@last")


def test_cli_list(capsys):
    from harmonia.cli import main

    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "cmu-aist-icme2025" in out and "3584" in out and "shikhar7ssu/OpenBEATs-ICME-SOUND" in out
