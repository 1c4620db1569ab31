"""What a night does, as one typed object built from the night's params over lab defaults.

Defaults are the paper's scale for 224x224 images; the demo and tests pass
smaller values in the night's params (``POST /nights`` or ``itloop night``).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class NightConfig(BaseModel):
    """Knobs of one night. Unknown keys are ignored when a stored night is read back, but refused
    when a night starts (``unknown_keys``), so a typo never silently runs the default."""

    model_config = ConfigDict(extra="ignore")

    candidates: list[str | dict[str, Any]] | None = Field(
        default=None, description="candidate models (names from worker.steps.candidates, or full specs)"
    )
    epsilons: list[float] = Field(default=[1.0, 2.0, 4.0, 8.0], min_length=1)
    clean_per_site: int = Field(default=21, ge=1, description="clean images perturbed per site and epsilon")
    directions: list[str] = Field(default=["up", "down"])
    targeted_epsilons: list[float] = Field(
        default=[2.5, 10.0], description="super-stimuli toward the site's preferred category; empty disables"
    )
    targeted_per_site: int = Field(default=2, ge=0)
    random_per_site: int = Field(
        default=2, ge=0, description="model-free random-direction pairs per site and epsilon"
    )
    ensemble: bool = Field(
        default=True,
        description="also offer the mean of all candidates (attacked as one model) as a per-site source",
    )
    min_transfer_pairs: int = Field(
        default=8,
        ge=1,
        description="twin pairs a source needs at a site before its measured transfer decides",
    )
    search_share: float = Field(
        default=0.34,
        ge=0.0,
        le=1.0,
        description=(
            "share of a site's guided twins made along the direction measured twins point to, on "
            "sites whose chosen source's own twins have not clearly moved them "
            "(across-day search) instead of by a surrogate, once twins are on record"
        ),
    )
    restarts: int = Field(default=100, ge=1)
    budget: int | None = Field(default=None, ge=1, description="gradient evaluations per case")
    deterministic: bool = True
    channels_last: bool | None = Field(
        default=None,
        description=(
            "keep synthesis rows channels-last (often faster for CNNs, e.g. ResNet-50 on a GPU); "
            "None: timed per model, except in deterministic mode, which needs a fixed layout (NCHW)"
        ),
    )
    seed: int = 0
    sites_per_shard: int = Field(default=4, ge=1)
    ceiling_threshold: float = Field(
        default=0.3, description="sites below this split-half reliability get no perturbations tonight"
    )
    repeats: int = Field(
        default=4, ge=1, description="repeats of every image (the average, with adaptive_repeats)"
    )
    adaptive_repeats: bool = Field(
        default=True,
        description=(
            "give each twin repeats in proportion to the width of its site's latest confidence interval "
            "at its epsilon (between repeats/2 and 2*repeats; the day's total is unchanged)"
        ),
    )
    on_ms: int = 100
    off_ms: int = 100
    images_per_trial: int = 8
    pair_separation_s: float = 25 * 60.0
    window_ms: tuple[float, float] | None = None
    train_days: int | None = Field(default=None, description="use this many most recent days; None = all")
    deadline: str | None = Field(
        default=None, description="ISO time by which the batch must publish (default: next ITLOOP_RIG_TIME)"
    )
    deadline_margin_s: float = Field(
        default=600.0, ge=0, description="stop synthesis this early to assemble and publish in time"
    )
    n_boot: int = 1000
    model_sensitivity_images: int = Field(
        default=4,
        ge=0,
        description="clean images per site on which each candidate model's own sensitivity is measured",
    )
    model_sensitivity_budget: int = 100

    @classmethod
    def from_params(cls, params: dict[str, Any], defaults: dict[str, Any] | None = None) -> NightConfig:
        """Night params over the lab's defaults (``ITLOOP_NIGHT_DEFAULTS``) over these defaults."""
        merged = {**(defaults or {}), **{k: v for k, v in params.items() if k != "session_id"}}
        return cls.model_validate(merged)

    @classmethod
    def unknown_keys(cls, params: dict[str, Any]) -> list[str]:
        return sorted(set(params) - set(cls.model_fields) - {"session_id"})
