"""``relative``: LatentTracer's loss divided by the image's own one-pass reconstruction error, so that the image's
difficulty (and much of what a perturbation adds to both) divides out.

The one inversion loop (:func:`latenttracer.inversion.invert`, every setting an
:class:`~latenttracer.inversion.InversionConfig` field, the authors' defaults) runs as for LatentTracer; the score
is ``min_k loss_k / loss_0``: the best loss over the steps relative to iteration 0's, the plain encode-decode error
of the same image (``init_loss``, which the rows keep). It lies in (0, 1]. An image the decoder made can be
inverted far below what one encode-decode pass gives (its latent exists); for any other image the optimisation
gains little over the encoder's guess. Costs exactly what LatentTracer costs.

Defining property (``tests/test_methods_normalised.py``): the score does not change when every loss of the trajectory is
multiplied by the same factor (a uniformly harder image), where LatentTracer's score scales with it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from latenttracer.inversion import InversionResult
from latenttracer.methods.base import METHODS
from latenttracer.methods.inversion_methods import LatentTracer

__all__ = ["Relative", "relative_score"]


def relative_score(best: float, init: float) -> float:
    """``best / init`` (NaN unless both are finite and ``init > 0``)."""
    if not (math.isfinite(best) and math.isfinite(init)) or init <= 0:
        return math.nan
    return best / init


@METHODS.register
@dataclass(frozen=True)
class Relative(LatentTracer):
    """LatentTracer's best loss over its iteration-0 loss (module docstring); lower = more likely belonging."""

    name = "relative"
    own_cache = True

    def __post_init__(self) -> None:
        if self.config.early_exit:
            raise ValueError("method relative: early exit compares the loop's own loss with the threshold, but this "
                             "score divides it by the iteration-0 loss; use early exit with latenttracer, ronan or "
                             "lowpass")

    def final_score(self, result: InversionResult) -> float:
        return relative_score(result.score, result.init_loss)
