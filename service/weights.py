"""The versioned weights file: every tuned number of the scorer, validated at load.

A link the scorer makes is stamped with `version` and its score components, so
any link can be explained. A typo fails loudly here, not silently at 3 a.m.
"""
from __future__ import annotations

import math
from importlib import resources
from pathlib import Path
from typing import Annotated

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from service.features import SCOPE_LABELS, SHARED_LABELS, TARGET_LABELS, Vocabulary

LINK_FEATURES = (
    "ended", "ongoing", "quiet_e2", "relgap", "log_size", "gap_e1", "gap_e10", "same_scope",
    "fingerprint", "shared_label", "pmi_kind", "pmi_name", "pmi_target", "cooc_kind", "cooc_name",
    "cooc_target", "noise_rate",
)
SIMILAR_FEATURES = ("kinds", "semantic")

Probability = Annotated[float, Field(ge=0.0, le=1.0)]


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class LinkModel(_Strict):
    """A logistic model: score = sigmoid(intercept + sum(coefficient * feature))."""

    intercept: float
    coefficients: dict[str, float]

    @model_validator(mode="after")
    def _known(self) -> LinkModel:
        if unknown := sorted(set(self.coefficients) - set(LINK_FEATURES)):
            raise ValueError(f"unknown link features {unknown}; known: {', '.join(LINK_FEATURES)}")
        return self


class SimilarModel(_Strict):
    """How past incidents are ranked: a weighted sum of kind overlap and meaning."""

    weights: dict[str, float]
    min_score: Probability = 0.0

    @model_validator(mode="after")
    def _known(self) -> SimilarModel:
        if unknown := sorted(set(self.weights) - set(SIMILAR_FEATURES)):
            raise ValueError(f"unknown similarity features {unknown}; known: {', '.join(SIMILAR_FEATURES)}")
        return self


class Weights(_Strict):
    version: str = Field(min_length=1)
    embedding_model: str = Field(min_length=1)
    # where its numbers came from (training data, model, metrics, date): for people, not code
    provenance: dict[str, object] = Field(default_factory=dict)
    link: LinkModel
    auto_link_at: Probability   # >= this: link (or open an incident from a related pair)
    suggest_at: Probability     # >= this: a suggestion for a responder
    context_at: Probability     # a resolved incident this similar adds its root cause as context
    window_minutes: float = Field(gt=0)  # how long after its last alert a candidate stays one
    target_labels: tuple[str, ...] = TARGET_LABELS
    shared_labels: tuple[str, ...] = SHARED_LABELS
    scope_labels: tuple[str, ...] = SCOPE_LABELS
    similar: SimilarModel

    @model_validator(mode="after")
    def _ordered(self) -> Weights:
        if self.suggest_at > self.auto_link_at:
            raise ValueError(f"suggest_at {self.suggest_at} is above auto_link_at {self.auto_link_at}")
        return self

    @property
    def vocabulary(self) -> Vocabulary:
        return Vocabulary(self.target_labels, self.shared_labels, self.scope_labels)

    def link_score(self, features: dict[str, float]) -> tuple[float, dict[str, float]]:
        """The link probability and each feature's contribution to its log-odds."""
        parts = {f: c * features.get(f, 0.0) for f, c in self.link.coefficients.items()}
        z = self.link.intercept + sum(parts.values())
        return 1.0 / (1.0 + math.exp(-max(-50.0, min(50.0, z)))), parts

    @classmethod
    def load(cls, path: Path | None = None) -> Weights:
        """Read a weights file, or the shipped default."""
        where = str(path) if path else "the shipped weights.yaml"
        text = Path(path).read_text() if path else \
            resources.files("service").joinpath("defaults", "weights.yaml").read_text()
        try:
            return cls.model_validate(yaml.safe_load(text))
        except (yaml.YAMLError, ValidationError) as exc:
            raise WeightsError(f"{where}: {exc}") from exc


class WeightsError(ValueError):
    """A weights file that cannot be used; the message names the file and the field."""
