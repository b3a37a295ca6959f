"""Pre-training data pools: manifests, domain mixtures in hours, webdataset shards and the
streaming, mixed, resumable loader."""

from harmonia.data.loader import MixtureLoader, build_loader, stream_hours
from harmonia.data.manifest import Entry, Source, read_manifest, scan_sources, write_manifest
from harmonia.data.mixture import PRESETS, HoursScheduler, MixturePlan, parse_ratio, plan_mixture
from harmonia.data.shards import read_index, write_shards

__all__ = [
    "PRESETS", "Entry", "HoursScheduler", "MixtureLoader", "MixturePlan", "Source", "build_loader",
    "parse_ratio", "plan_mixture", "read_index", "read_manifest", "scan_sources", "stream_hours",
    "write_manifest", "write_shards",
]
