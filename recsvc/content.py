"""Which content a customer sees in one slot: eligibility and a rule-based ranking, pure functions over plain values.

score = 0.5 * affinity + 0.3 * segment + 0.2 * priority / 100, where
  affinity = the customer's best category score among the item's categories, divided by their top category score
             (so 1.0 when the item is in their favourite category; negative and unknown categories count 0),
  segment  = 1 when the item targets the customer's segment explicitly (untargeted items: 0),
  priority = the item's priority, 0..100.
Ties: higher priority first, then content_id ascending. A customer without history (or a degraded read) gets
affinity 0 and no segment, so the order is priority order (cold start). Reasons name what contributed:
`category:<the item's matching category>`, `segment:<segment>` (names as tokens: `segment:at_risk` for "at risk", see
`recommend.token`), or `priority` when neither matched.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from features.content import Content
from recsvc.recommend import token

W_AFFINITY = 0.5
W_SEGMENT = 0.3
W_PRIORITY = 0.2
MAX_K = 20


@dataclass(frozen=True, slots=True)
class Candidate:
    """What ranking needs of a content item, precomputed once per catalog load."""

    content_id: str
    kind: str
    title: str
    url: str | None
    image_url: str | None
    categories: tuple[tuple[str, str], ...]  # (casefolded, as written)
    segments: frozenset[str]
    start: float  # epoch seconds; -inf when open
    end: float  # +inf when open
    priority: int

    @classmethod
    def of(cls, item: Content) -> "Candidate":
        return cls(item.content_id, item.kind, item.title, item.url, item.image_url,
                   tuple((c.casefold(), c) for c in item.categories), frozenset(item.segments),
                   item.start_ts, item.end_ts, item.priority)


@dataclass(frozen=True, slots=True)
class Ranked:
    candidate: Candidate
    score: float
    reasons: tuple[str, ...]


Placement = tuple[str, str]  # (channel, slot)


def by_placement(items: Iterable[Content]) -> dict[Placement, tuple[Candidate, ...]]:
    """Available items under each (channel, slot) they are offered on, in cold-start order (priority, then id)."""
    out: dict[Placement, list[Candidate]] = {}
    for item in items:
        if not item.available:
            continue
        cand = Candidate.of(item)
        for channel in dict.fromkeys(item.channels):
            for slot in dict.fromkeys(item.slots):
                out.setdefault((channel, slot), []).append(cand)
    return {p: tuple(sorted(cs, key=lambda c: (-c.priority, c.content_id))) for p, cs in out.items()}


def eligible(c: Candidate, now: float, segment: str | None) -> bool:
    """Scheduled now (start inclusive, end exclusive) and, when targeted, targeted at this segment."""
    return c.start <= now < c.end and (not c.segments or (segment is not None and segment in c.segments))


def normalized_affinity(affinity: Sequence[tuple[str, float]]) -> dict[str, float]:
    """Category -> score / top score (casefolded; positive scores only)."""
    top = max((s for _, s in affinity if s > 0), default=0.0)
    out: dict[str, float] = {}
    if top <= 0:
        return out
    for cat, s in affinity:
        if s > 0:
            key = cat.casefold()
            out[key] = max(out.get(key, 0.0), s / top)
    return out


def rank(candidates: Sequence[Candidate], *, now: float, segment: str | None,
         affinity: Sequence[tuple[str, float]], k: int) -> list[Ranked]:
    """The best k eligible candidates, best first (formula and ties in the module docstring)."""
    aff = normalized_affinity(affinity)
    scored: list[tuple[float, int, str, Ranked]] = []
    for c in candidates:
        if not eligible(c, now, segment):
            continue
        m, best = 0.0, None
        for folded, written in c.categories:
            a = aff.get(folded, 0.0)
            if a > m:
                m, best = a, written
        s = 1.0 if c.segments and segment is not None else 0.0  # eligible + targeted = targeted at this segment
        score = W_AFFINITY * m + W_SEGMENT * s + W_PRIORITY * c.priority / 100.0
        reasons: tuple[str, ...] = ()
        if best is not None:
            reasons += (f"category:{token(best)}",)
        if s:
            reasons += (f"segment:{token(segment or '')}",)
        if not reasons:
            reasons = ("priority",)
        scored.append((-round(score, 9), -c.priority, c.content_id, Ranked(c, round(score, 6), reasons)))
    scored.sort(key=lambda t: t[:3])
    return [r for *_, r in scored[:k]]
