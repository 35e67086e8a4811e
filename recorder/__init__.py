"""Pure data layer: crash-safe HDF5 episodes, episode store, validation, exports.

Never imports drivers/ or teleop_app/. Schema: docs/recorder_schema.md.
"""
from .schema import SCHEMA_VERSION, CorruptEpisodeError, EpisodeMeta, RecorderError
from .writer import EpisodeWriter
from .reader import Episode, read_episode
from .store import EpisodeInfo, EpisodeStore
from .validate import cadence_report, validate_episode

__all__ = ["SCHEMA_VERSION", "EpisodeMeta", "RecorderError", "CorruptEpisodeError", "EpisodeWriter",
           "Episode", "read_episode", "EpisodeStore", "EpisodeInfo", "cadence_report", "validate_episode"]
