"""Configuration files shipped inside the package (so a non-editable install has them too).

``ds_zero0..3.json`` are the DeepSpeed configs that ``EngineConfig.ds_config`` names;
``demo.yaml`` is the embedded demo's recipe. The repository's ``configs/`` links to these files,
so both paths name the same bytes. ``shipped(name)`` is their path on disk.
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path


def shipped(name: str) -> Path:
    """Path of a shipped config file (``demo.yaml``, ``ds_zero1.json``, ...); may not exist."""
    return Path(str(resources.files(__name__).joinpath(name)))
