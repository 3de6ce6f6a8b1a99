"""CompoundGrow: progressive growth of deepln models while ``transformers.Trainer`` trains.

Gu et al., "On the Transformer Growth for Progressive BERT Training", NAACL 2021, and the
authors' code ``google-research/grow_bert``. A model starts shallow, with shared FFN blocks and (BERT) mean-pooled first-layer queries, and
grows at stage boundaries until it is the full model:

* :mod:`.operators`: depth (progressive stacking, with α of DeepNorm/Upscale LN recomputed and compensated) and
  width (FFN un-sharing with Net2Net's uneven split and small noise, so the copies separate in training),
  each returning where every new parameter came from;
* :mod:`.pooling`: the length treatment (embedding pooling of the first layer's queries, masked LM only);
* :mod:`.optim_state`: carrying Adam's moments and step counts over to the grown parameters;
* :mod:`.schedule`: stage lists (``compound``, ``stack`` or custom); :mod:`.callback`: the ``TrainerCallback``;
* :mod:`.pretrain_growth`: ``deepln pretrain --grow`` (:class:`GrowthExtension`, a run extension of
  :func:`modeling_deepln.training.pretrain`); :mod:`.bench`: ``deepln grow-bench``.

The model files are untouched: a grown model saves as a plain deepln checkpoint.
"""

from .callback import CompoundGrowCallback, grow_model, stage_model
from .operators import GrowthError, ParamOrigin, check_stackable, copy_without_hooks, stack_layers, unshare_ffn
from .optim_state import grow_optimizer
from .pooling import disable_length_pooling, enable_length_pooling
from .pretrain_growth import GrowthExtension
from .schedule import NAMED_SCHEDULES, GrowthStage, parse_schedule

__all__ = [
    "CompoundGrowCallback",
    "GrowthError",
    "GrowthExtension",
    "GrowthStage",
    "NAMED_SCHEDULES",
    "ParamOrigin",
    "check_stackable",
    "copy_without_hooks",
    "disable_length_pooling",
    "enable_length_pooling",
    "grow_model",
    "grow_optimizer",
    "parse_schedule",
    "stack_layers",
    "stage_model",
    "unshare_ffn",
]
