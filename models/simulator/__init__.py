"""Synthetic IT population ("virtual brain") and synthetic clean images.

Ground truth for the demo, the virtual rig and the tests: procedural clean images
(:func:`make_clean_images`, :func:`make_reference_images`), a linear-nonlinear population
whose adversarial sensitivity is exact (:class:`VirtualBrain`), other families of populations
with a white-box truth (:func:`make_brain`, :data:`FAMILIES`, :mod:`models.simulator.families`),
Poisson spike trains for RSVP sessions (:func:`simulate_presentation_spikes`) and fixation breaks
(:func:`mark_fixation_breaks`).
"""

from models.simulator.brain import Sensitivity, VirtualBrain
from models.simulator.exact import argmax_linear_ball_box, max_linear_ball_box
from models.simulator.families import DEFAULT_FAMILY, FAMILIES, Brain, make_brain, natural_share
from models.simulator.images import REFERENCE_SEED, make_clean_images, make_reference_images
from models.simulator.spikes import (
    SpikeData,
    expected_window_count,
    mark_fixation_breaks,
    simulate_presentation_spikes,
)

__all__ = [
    "DEFAULT_FAMILY",
    "FAMILIES",
    "Brain",
    "REFERENCE_SEED",
    "Sensitivity",
    "SpikeData",
    "VirtualBrain",
    "argmax_linear_ball_box",
    "expected_window_count",
    "make_brain",
    "make_clean_images",
    "make_reference_images",
    "mark_fixation_breaks",
    "max_linear_ball_box",
    "natural_share",
    "simulate_presentation_spikes",
]
