"""Inference engines behind one `LanguageModel` protocol; each heavy library is imported in one module."""

from __future__ import annotations

from bon.core.config import ModelConfig
from bon.core.registry import Registry
from bon.engines.contract import LanguageModel, Sample, SamplingSettings, derive_seed

ENGINES: Registry = Registry(
    "backend",
    {
        "transformers": "bon.engines.hf:load",
        "vllm": "bon.engines.vllm:load",
        "openai": "bon.engines.openai_server:load",
    },
)


def load_engine(cfg: ModelConfig) -> LanguageModel:
    """The loaded model for a config; one instance per process and settings (shared by policy and judge)."""
    return ENGINES.get(cfg.backend)(cfg)


__all__ = ["ENGINES", "LanguageModel", "Sample", "SamplingSettings", "derive_seed", "load_engine"]
