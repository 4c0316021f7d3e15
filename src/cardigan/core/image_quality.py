"""CAMUS's image-quality grades and the phantom's shares of them (``phantom.quality_shares``).

Kept apart from the phantom itself, which imports the imaging stack, so that config validation
(run whenever Snakemake parses the workflow) checks the shares with the same rule without it.
"""

from __future__ import annotations

from collections.abc import Mapping

from cardigan.core.defaults import default

#: CAMUS's ImageQuality grades; their shares are ``phantom.quality_shares`` (by default CAMUS-like:
#: CAMUS is not filtered for quality, a good part is Poor).
QUALITY_GRADES = ("Good", "Medium", "Poor")


def quality_probabilities(shares: Mapping[str, float] | None = None) -> tuple[float, ...]:
    """The probabilities of :data:`QUALITY_GRADES` from ``phantom.quality_shares`` (None: the
    schema default); raises ValueError naming the key unless they are three shares summing to 1."""
    shares = default("phantom", "quality_shares") if shares is None else shares
    key = "phantom.quality_shares"
    if not isinstance(shares, Mapping) or set(shares) != set(QUALITY_GRADES):
        got = sorted(shares) if isinstance(shares, Mapping) else repr(shares)
        raise ValueError(f"{key} must give a share for each of {', '.join(QUALITY_GRADES)}, "
                         f"got {got}")
    for grade in QUALITY_GRADES:
        value = shares[grade]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
            raise ValueError(f"{key}.{grade} must be a number from 0 to 1, got {value!r}")
    total = sum(float(shares[g]) for g in QUALITY_GRADES)
    if abs(total - 1) > 1e-6:
        raise ValueError(f"{key} must sum to 1, got {total:g} "
                         f"({', '.join(f'{g} {shares[g]:g}' for g in QUALITY_GRADES)})")
    return tuple(float(shares[g]) / total for g in QUALITY_GRADES)
