"""Growth schedules: the stages of a CompoundGrow run and the shape of the model in each.

A schedule is a ``;``-separated list of stages, ``depth=D[,ffn_share=K][,pool=P][@END]``, the last one without
``@END``:

* ``D``: number of layers (an integer), or a share of the full depth written as a fraction (``1/4``, ``0.5``,
  ``1/1``) or ``full``;
* ``K``: FFN sharing factor (the FFN inner size is ``d_ff/K``); ``P``: embedding pool size (BERT only); both 1 by
  default;
* ``END``: the global step at which the stage ends, an integer, or a fraction of the run's ``max_steps``
  (``0.2``).

Named schedules (the paper's §4 and Appendix A: 1M steps; stage ends at 200K/400K/700K for CompoundGrow and 300K/700K
for stacking, as fractions here):

* ``compound``: ``depth=1/4,ffn_share=2,pool=2@0.2; depth=1/2,ffn_share=2,pool=2@0.4;
  depth=full,ffn_share=2,pool=2@0.7; depth=full`` (k = 2 could not be checked against the paper's text; GPT drops
  ``pool``, which applies to masked LM only);
* ``stack``: ``depth=1/4@0.3; depth=1/2@0.7; depth=full`` (the progressive-stacking baseline).

The last stage must be the full model (``depth=full``, no sharing, no pooling).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from fractions import Fraction

from .operators import GrowthError

__all__ = ["GrowthStage", "NAMED_SCHEDULES", "parse_schedule", "stage_index_at", "resolve_ends"]

NAMED_SCHEDULES = {
    "compound": "depth=1/4,ffn_share=2,pool=2@0.2; depth=1/2,ffn_share=2,pool=2@0.4; "
    "depth=full,ffn_share=2,pool=2@0.7; depth=full",
    "stack": "depth=1/4@0.3; depth=1/2@0.7; depth=full",
}


@dataclass(frozen=True)
class GrowthStage:
    """One stage: ``depth`` layers, FFN sharing ``ffn_share``, pool size ``pool``, ending at ``end`` (None: last).

    ``end`` is a step (int) or, before :func:`resolve_ends`, a fraction of the run (float < 1).
    """

    depth: int
    ffn_share: int = 1
    pool: int = 1
    end: int | float | None = None

    def describe(self, full_ffn: int) -> str:
        return f"{self.depth} layers, FFN {full_ffn // self.ffn_share}, pool {self.pool}"

    def to_dict(self) -> dict:
        return asdict(self)


def _depth(text: str, full_depth: int) -> int:
    text = text.strip()
    if text == "full":
        return full_depth
    try:
        value = Fraction(text)
    except ValueError:
        raise GrowthError(f"depth={text}: use a number of layers, a fraction of the full depth, or 'full'.") from None
    depth = value * full_depth if ("/" in text or "." in text) else value
    if depth.denominator != 1 or depth < 1:
        raise GrowthError(f"depth={text} of {full_depth} layers is not a whole number of layers.")
    return int(depth)


def _end(text: str) -> int | float:
    value = float(text)
    if value <= 0:
        raise GrowthError(f"Stage end @{text} must be positive (a step, or a fraction of the run).")
    return value if value < 1 else int(value)


def _stage(text: str, full_depth: int, full_ffn: int, family: str) -> GrowthStage:
    body, _, end = text.partition("@")
    values: dict[str, int] = {"ffn_share": 1, "pool": 1}
    for item in filter(None, (part.strip() for part in body.split(","))):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or key not in ("depth", "ffn_share", "pool"):
            raise GrowthError(f"Bad stage item {item!r}: use depth=D, ffn_share=K, pool=P.")
        values[key] = _depth(value, full_depth) if key == "depth" else int(value)
    if "depth" not in values:
        raise GrowthError(f"Stage {text!r} has no depth=D.")
    if values["ffn_share"] < 1 or full_ffn % values["ffn_share"]:
        raise GrowthError(f"ffn_share={values['ffn_share']} must divide the FFN size {full_ffn}.")
    if values["pool"] < 1:
        raise GrowthError("pool must be >= 1.")
    if values["pool"] > 1 and family != "bert":
        raise GrowthError("pool (embedding pooling) applies to BERT masked-LM only: every CLM position is a target.")
    return GrowthStage(values["depth"], values["ffn_share"], values["pool"], _end(end) if end.strip() else None)


def parse_schedule(text: str, full_depth: int, full_ffn: int, family: str = "bert") -> list[GrowthStage]:
    """Parse a schedule (or a :data:`NAMED_SCHEDULES` name) for a model of ``full_depth`` layers and FFN ``full_ffn``.

    Raises :class:`GrowthError` for a schedule that does not grow monotonically to the full model.
    """
    name = text.strip()
    if name in NAMED_SCHEDULES:
        text = NAMED_SCHEDULES[name]
        if family != "bert":
            text = text.replace(",pool=2", "")
    stages = [_stage(part, full_depth, full_ffn, family) for part in text.split(";") if part.strip()]
    if len(stages) < 2:
        raise GrowthError(f"A growth schedule needs at least two stages, got {text!r}.")
    last = stages[-1]
    if last.end is not None or (last.depth, last.ffn_share, last.pool) != (full_depth, 1, 1):
        raise GrowthError(f"The last stage must be the full model (depth={full_depth}, no sharing or pooling, no @END).")
    for before, after in zip(stages, stages[1:]):
        if before.end is None:
            raise GrowthError("Every stage but the last needs an end (@STEP or @FRACTION).")
        if after.depth < before.depth or before.ffn_share % after.ffn_share or after.pool > before.pool:
            raise GrowthError(f"Stages must only grow: {before} -> {after}.")
    return stages


def resolve_ends(stages: list[GrowthStage], max_steps: int) -> list[GrowthStage]:
    """Turn fractional ends into steps of a ``max_steps`` run; check the ends increase."""
    resolved = []
    for stage in stages:
        end = stage.end
        if isinstance(end, float):
            end = max(1, round(end * max_steps))
        resolved.append(GrowthStage(stage.depth, stage.ffn_share, stage.pool, end))
    ends = [s.end for s in resolved[:-1]]
    if ends != sorted(set(ends)):
        raise GrowthError(f"Stage ends must strictly increase, got steps {ends} (max_steps {max_steps}).")
    return resolved


def stage_index_at(stages: list[GrowthStage], step: int) -> int:
    """Index of the stage that trains step ``step + 1`` (a stage ending at ``E`` covers steps ``< E``)."""
    for index, stage in enumerate(stages):
        if stage.end is None or step < stage.end:
            return index
    return len(stages) - 1
