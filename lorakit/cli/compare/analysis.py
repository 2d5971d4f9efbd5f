"""The arithmetic of ``lorakit compare``'s reading: the best rate, seed spreads, forgetting at equal task score.

Forgetting at equal task score is Biderman et al.'s reading ("LoRA Learns Less and Forgets Less", 2024): a method
that learns more usually also forgets more, so comparing each method at its own best rate mixes the two. Instead,
each method's sweep points (learning: task score gained over the base model; forgetting: a probe's loss) form a
curve, and the methods are compared where their curves reach the same learning:

- the curve starts at the base model (learning 0, forgetting 0: the limit of a rate going to 0);
- only its Pareto front counts: a point another point of the same method beats on both (learns at least as much
  and forgets less) is a rate worth no one's while;
- between two front points forgetting is interpolated linearly in learning; below the first front point it is
  that point's forgetting (it reaches more, at that cost); above the last point the method has not been seen to
  reach that level, and no value is given;
- the levels compared are 1/4, 1/2, 3/4 and all of the highest learning that at least two methods reach (one
  method alone: its own highest), so the methods that learn most are compared over their whole common range; a
  method that learns less shows no value above its own best. (With "every method reaches" instead, one method
  that barely learns, such as attention-only LoRA on new facts, would confine the comparison to near the base.)
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Mapping, Sequence

Point = tuple[float, float]  # (learning, forgetting)
SHARES = (0.25, 0.5, 0.75, 1.0)


def best_rate(validation: Mapping[float, float], higher_is_better: bool = True) -> float:
    """The rate whose validation score is best; a tie goes to the lower rate (the smaller change to the model)."""
    sign = 1.0 if higher_is_better else -1.0
    return min(validation, key=lambda lr: (-sign * validation[lr], lr))


def at_edge(best: float, rates: Sequence[float]) -> str | None:
    """ "lowest" or "highest" when the best of several rates is at an end of the sweep (a better one may be beyond)."""
    if len(rates) < 2:
        return None
    return "lowest" if best == min(rates) else "highest" if best == max(rates) else None


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1; 0 for one value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def learning(score: float, base: float, higher_is_better: bool = True) -> float:
    """Task score gained over the base model (for a lower-is-better metric such as perplexity: its decrease)."""
    return score - base if higher_is_better else base - score


def frontier(points: Sequence[Point]) -> list[Point]:
    """The Pareto front of (learning, forgetting) points, by learning: forgetting rises along it."""
    front: list[Point] = []
    least = math.inf
    for gain, lost in sorted(points, key=lambda p: (-p[0], p[1])):  # most learning first, then least forgetting
        if lost < least:
            front.append((gain, lost))
            least = lost
    return front[::-1]


def forgetting_at(front: Sequence[Point], level: float) -> float | None:
    """The forgetting at learning ``level`` along a front (see the module docstring); None past its last point."""
    if not front or level > front[-1][0]:
        return None
    if level <= front[0][0]:
        return front[0][1]
    for (g0, f0), (g1, f1) in itertools.pairwise(front):
        if g0 <= level <= g1:
            return f0 + (level - g0) / (g1 - g0) * (f1 - f0)
    return None  # unreachable: the front is sorted by learning


def equal_score(curves: Mapping[str, Sequence[Point]]) -> tuple[list[float], dict[str, list[float | None]]]:
    """(the learning levels, each method's forgetting at each), the base model's (0, 0) added to every curve."""
    fronts = {name: frontier([(0.0, 0.0), *points]) for name, points in curves.items()}
    reached = sorted((f[-1][0] for f in fronts.values() if f[-1][0] > 0), reverse=True)
    levels = [reached[min(1, len(reached) - 1)] * s for s in SHARES] if reached else []
    return levels, {name: [forgetting_at(f, level) for level in levels] for name, f in fronts.items()}
