"""nst-jax: neural style transfer (Gatys, Ecker & Bethge) in JAX.

Public API (all pure functions take ONE image or feature map; batch with ``jax.vmap``):

* network and weights: :class:`VGG` (:class:`VGG16`, :class:`VGG19`), :class:`VGGWeights`,
  :func:`resolve_weights`,
  :func:`load_weights`, :func:`random_weights`;
* features and losses: :func:`extract_features`, :func:`gram_matrix`, :func:`content_loss`,
  :func:`style_loss`, :func:`total_variation_loss`, :func:`style_transfer_loss`,
  :func:`compute_targets`;
* stylization: :class:`StyleConfig` (:class:`LossSpec`, :class:`OptimSpec`, :class:`RunSpec`),
  :func:`get_preset`, :func:`stylize`, :func:`stylize_batch`, :func:`sweep` (a grid of
  settings in one batch) (results :class:`StylizeResult`, per-chunk :class:`ChunkReport`).

Everything else lives in its module (``nst_jax.run.sharding``, ``nst_jax.image_io``, ...) and is
importable from there; the names below are the stable surface.
"""

from nst_jax.config import DEFAULT_PRESETS as DEFAULT_PRESETS
from nst_jax.config import default_preset as default_preset
from nst_jax.config import PRESETS as PRESETS
from nst_jax.config import RunSpec as RunSpec
from nst_jax.config import StyleConfig as StyleConfig
from nst_jax.config import get_preset as get_preset
from nst_jax.errors import NstError as NstError
from nst_jax.features import extract_features as extract_features
from nst_jax.losses import CONVENTIONS as CONVENTIONS
from nst_jax.losses import LossConvention as LossConvention
from nst_jax.losses import content_loss as content_loss
from nst_jax.losses import gram_matrix as gram_matrix
from nst_jax.losses import style_layer_loss as style_layer_loss
from nst_jax.losses import style_loss as style_loss
from nst_jax.losses import total_variation_loss as total_variation_loss
from nst_jax.objective import LossSpec as LossSpec
from nst_jax.objective import compute_targets as compute_targets
from nst_jax.objective import style_transfer_loss as style_transfer_loss
from nst_jax.optimize import OptimSpec as OptimSpec
from nst_jax.preprocessing import Preprocessing as Preprocessing
from nst_jax.run.results import ChunkReport as ChunkReport
from nst_jax.run.results import StylizeResult as StylizeResult
from nst_jax.run.sweep import SweepPoint as SweepPoint
from nst_jax.run.sweep import sweep as sweep
from nst_jax.run.transfer import stylize as stylize
from nst_jax.run.transfer import stylize_batch as stylize_batch
from nst_jax.vgg import NETWORKS as NETWORKS
from nst_jax.vgg import VGG as VGG
from nst_jax.vgg import VGG16 as VGG16
from nst_jax.vgg import VGG19 as VGG19
from nst_jax.weights.container import VGGWeights as VGGWeights
from nst_jax.weights.container import random_weights as random_weights
from nst_jax.weights.file import load_weights as load_weights
from nst_jax.weights.store import resolve_weights as resolve_weights

__version__ = "0.1.0"

__all__ = [
    "CONVENTIONS", "DEFAULT_PRESETS", "NETWORKS", "PRESETS", "VGG", "VGG16", "VGG19",
    "ChunkReport", "LossConvention", "LossSpec", "NstError", "OptimSpec", "Preprocessing",
    "RunSpec", "StyleConfig", "StylizeResult", "SweepPoint", "VGGWeights",
    "compute_targets", "content_loss", "extract_features", "get_preset", "gram_matrix",
    "load_weights", "random_weights", "resolve_weights", "style_layer_loss", "style_loss",
    "style_transfer_loss", "stylize", "stylize_batch", "sweep", "total_variation_loss",
]

