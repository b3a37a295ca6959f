"""Named pretrained checkpoints (filled in by the ensemble/registry work, issue 4)."""

from __future__ import annotations

REGISTRY: dict[str, object] = {}


def load_named(name: str, **options):
    raise NotImplementedError(f"named checkpoint {name!r}: the registry is not implemented yet")


def load_adhoc_ensemble(spec: str, **options):
    raise NotImplementedError("ad-hoc ensembles (a+b+c) are not implemented yet")


def load_hf_repo(repo_id: str, **options):
    raise NotImplementedError(f"Hugging Face repo ids ({repo_id}) are not implemented yet")
