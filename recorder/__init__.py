"""Pure data layer: crash-safe HDF5 episodes, episode store, validation, exports.

Never imports drivers/ or teleop_app/. Schema: docs/recorder_schema.md.
Names are imported lazily (keeps the HDF5 writer child process and app start-up light).
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "SCHEMA_VERSION": "schema", "EpisodeMeta": "schema", "RecorderError": "schema",
    "CorruptEpisodeError": "schema", "EpisodeWriter": "writer", "Episode": "reader",
    "read_episode": "reader", "EpisodeStore": "store", "EpisodeInfo": "store",
    "cadence_report": "validate", "validate_episode": "validate",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'recorder' has no attribute {name!r}")
