"""A night's parameters, typed once: the body of ``POST /nights``, ``ITLOOP_NIGHT_DEFAULTS`` and
what the night's stages read.

Defaults are the paper's scale for 224x224 images; the demo and tests pass smaller values in the
night's params (``POST /nights`` or ``itloop night``). This module is shared vocabulary (like
:mod:`itloop.settings`, which validates the lab defaults with it at start-up), so the server, the
night and the settings all import it without importing each other. ``docs/night-parameters.md``
explains every field.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError


class NightConfig(BaseModel):
    """Knobs of one night. Unknown keys are ignored when a stored night is read back, but refused
    when a night starts (``unknown_keys``), so a typo never silently runs the default."""

    model_config = ConfigDict(extra="ignore")

    candidates: list[str | dict[str, Any]] | None = Field(
        default=None,
        description="candidate models to refit (builtin names, e.g. resnet50, pixels16, small_cnn, vone, "
        "or full specs); None: ITLOOP_NIGHT_CANDIDATES. An unknown name is refused (422)",
    )
    epsilons: list[float] = Field(
        default=[1.0, 2.0, 4.0, 8.0],
        min_length=1,
        description="L2 budgets of the perturbations (images in [0,1], 224x224: the paper's 1-10)",
    )
    clean_per_site: int = Field(default=21, ge=1, description="clean images perturbed per site and epsilon")
    directions: list[Literal["up", "down"]] = Field(
        default=["up", "down"], description="which way twins push each site's rate: up, down or both"
    )
    targeted_epsilons: list[float] = Field(
        default=[2.5, 10.0], description="super-stimuli toward the site's preferred category; empty disables"
    )
    targeted_per_site: int = Field(
        default=2, ge=0, description="targeted super-stimuli per site and targeted epsilon"
    )
    random_per_site: int = Field(
        default=2, ge=0, description="model-free random-direction pairs per site and epsilon"
    )
    fresh_clean: int = Field(
        default=0,
        ge=0,
        description=(
            "clean images from the lab's clean sets added to each batch besides the twins' parents, "
            "those the subject has seen least first (never shown before any shown again): new images "
            "the surrogates learn each site's tuning from"
        ),
    )
    fresh_repeats: int | None = Field(
        default=None,
        ge=1,
        description=(
            "repeats of each fresh clean image (None: repeats); fewer repeats of more images teach "
            "the surrogates more for the same presentations"
        ),
    )
    parents: Literal["recorded", "any"] = Field(
        default="recorded",
        description=(
            "which clean images the twins' parents are drawn from: 'recorded' (images the subject "
            "has already been recorded viewing, the whole clean set while fewer than clean_per_site "
            "are) or 'any' (the whole clean set)"
        ),
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
            "(across-day search) instead of by a surrogate, once twins are on record and where "
            "the search's held-out predictions of them beat chance"
        ),
    )
    restarts: int = Field(default=100, ge=1, description="random restarts per synthesis case")
    budget: int | None = Field(default=None, ge=1, description="gradient evaluations per case")
    deterministic: bool = Field(
        default=True, description="deterministic synthesis, so a re-run night makes the same images"
    )
    channels_last: bool | None = Field(
        default=None,
        description=(
            "keep synthesis rows channels-last (often faster for CNNs, e.g. ResNet-50 on a GPU); "
            "None: timed per model, except in deterministic mode, which needs a fixed layout (NCHW)"
        ),
    )
    precision: Literal["fp32", "bf16"] = Field(
        default="fp32",
        description=(
            "arithmetic of the synthesis model calls on a GPU: bf16 autocast is about 1.25x faster "
            "for ResNet-50 on an H200 and as strong at the default budget; images are always "
            "scored and shipped from fp32, and a CPU always computes in fp32"
        ),
    )
    seed: int = Field(default=0, description="seed of every random choice the night makes")
    sites_per_shard: int = Field(default=4, ge=1, description="complete sites per synthesis job")
    ceiling_threshold: float = Field(
        default=0.3,
        ge=-1.0,
        le=1.0,
        description="sites below this split-half reliability get no perturbations tonight",
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
    on_ms: int = Field(default=100, ge=1, description="RSVP: ms each image is shown")
    off_ms: int = Field(default=100, ge=0, description="RSVP: ms of blank between images")
    images_per_trial: int = Field(default=8, ge=1, description="RSVP: images per fixation trial")
    pair_separation_s: float = Field(
        default=25 * 60.0, ge=0, description="least time between a clean image and its twin (s)"
    )
    window_ms: tuple[float, float] | None = Field(
        default=None, description="spike-count window after onset (ms); None: ITLOOP_RESPONSE_WINDOW_MS"
    )
    train_days: int | None = Field(default=None, description="use this many most recent days; None = all")
    readout_cv: Literal["gcv", "loo"] = Field(
        default="gcv",
        description=(
            "how each site's ridge penalty is chosen: gcv (generalised cross-validation; the readout "
            "keeps running statistics, so the next night folds in only its new images) or loo (exact "
            "leave-one-out, refitted on all days every night)"
        ),
    )
    deadline: str | None = Field(
        default=None, description="ISO time by which the batch must publish (default: next ITLOOP_RIG_TIME)"
    )
    deadline_margin_s: float = Field(
        default=600.0, ge=0, description="stop synthesis this early to assemble and publish in time"
    )
    n_boot: int = Field(default=1000, ge=1, description="bootstrap resamples of the confidence intervals")
    model_sensitivity_images: int = Field(
        default=4,
        ge=0,
        description="clean images per site on which each candidate model's own sensitivity is measured",
    )
    model_sensitivity_budget: int = Field(
        default=100, ge=1, description="gradient evaluations per case of a model's own sensitivity"
    )

    @classmethod
    def from_params(cls, params: dict[str, Any], defaults: dict[str, Any] | None = None) -> NightConfig:
        """Night params over the lab's defaults (``ITLOOP_NIGHT_DEFAULTS``) over these defaults."""
        merged = {**(defaults or {}), **{k: v for k, v in params.items() if k != "session_id"}}
        return cls.model_validate(merged)

    @classmethod
    def unknown_keys(cls, params: dict[str, Any]) -> list[str]:
        """Keys that are not night parameters (a typo would otherwise silently run the default)."""
        return sorted(set(params) - set(cls.model_fields) - {"session_id"})


class NightParams(NightConfig):
    """The night parameters a client or the lab sets: every field optional, unknown keys refused.

    The body of ``POST /nights`` (``params``) and the form of ``ITLOOP_NIGHT_DEFAULTS``. Only the
    keys given are stored with the night; the rest come from the lab defaults, then the defaults
    shown here, when the night's stages read them (:meth:`NightConfig.from_params`).
    """

    model_config = ConfigDict(extra="forbid")


def describe_errors(exc: ValidationError, *, prefix: str = "") -> str:
    """Every problem of a night-parameter validation in one line, each naming its key."""
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err.get("loc", ()))
        msg = "unknown parameter" if err.get("type") == "extra_forbidden" else err.get("msg", "invalid")
        parts.append(f"{prefix}{where}: {msg}")
    return "; ".join(parts)
