"""Which explored states to label: highest committee spread first, spread out in time and condition."""
from __future__ import annotations

import torch

__all__ = ["select_by_spread", "draw_holdout"]


def select_by_spread(spread: torch.Tensor, run: torch.Tensor, step: torch.Tensor, condition: torch.Tensor,
                     count: int, min_gap: int = 0, spins: torch.Tensor | None = None,
                     min_distance: float = 0.0) -> torch.Tensor:
    """Indices of ``count`` candidate states, highest spread first.

    Greedy: candidates are taken in order of decreasing spread, skipping one that lies within
    ``min_gap`` steps of a state already taken from the same run or within ``min_distance``
    (RMS over the sites of |S_i - S'_i|) of any state already taken, and, in a first pass, one
    whose condition already holds its share (ceil(count / conditions)) so that every
    condition contributes. When the rules leave too few, the skipped candidates fill up the
    rest, again by spread.

    Args:
        spread: (C,) predicted error of each candidate (e.g. the committee's predicted RMSE of B).
        run: (C,) run the candidate comes from (any integer label, unique across conditions).
        step: (C,) its LLG step.
        condition: (C,) its condition.
        count: how many to select (at most C).
        min_gap: steps between two states of one run.
        spins: (C, N, 3) the candidates' spins (needed for ``min_distance`` > 0).
        min_distance: RMS spin difference below which two candidates count as one state: a
            relaxation sits at its minimum for many snapshots, and labelling it again and again
            teaches nothing new.

    Returns:
        (count,) int64 indices into the candidates, in the order they were chosen.

    Raises:
        ValueError: if ``count`` exceeds the number of candidates.
    """
    n = len(spread)
    if count > n:
        raise ValueError(f"cannot select {count} states from {n} candidates")
    if min_distance > 0 and spins is None:
        raise ValueError("min_distance > 0 needs the candidates' spins")
    order = torch.argsort(spread, descending=True, stable=True).tolist()
    share = -(-count // max(1, len(torch.unique(condition))))
    chosen, taken_per_condition, skipped = [], {}, []
    for i in order:
        if len(chosen) == count:
            break
        near = any(int(run[j]) == int(run[i]) and abs(int(step[j]) - int(step[i])) < min_gap for j in chosen)
        if not near and min_distance > 0 and chosen:
            rms = (spins[chosen] - spins[i]).pow(2).sum(-1).mean(-1).sqrt()  # (len(chosen),)
            near = bool((rms < min_distance).any())
        full = taken_per_condition.get(int(condition[i]), 0) >= share
        if near or full:
            skipped.append(i)
            continue
        chosen.append(i)
        taken_per_condition[int(condition[i])] = taken_per_condition.get(int(condition[i]), 0) + 1
    for i in skipped:  # the rules left too few: fill up by spread
        if len(chosen) == count:
            break
        chosen.append(i)
    return torch.tensor(chosen, dtype=torch.long)


def draw_holdout(num_candidates: int, exclude: torch.Tensor, count: int, seed: int) -> torch.Tensor:
    """``count`` candidates drawn uniformly at random among those not in ``exclude``: states that
    measure the true error of the explored distribution (not of its most uncertain part).

    Returns:
        (count,) int64 indices, sorted.
    """
    free = torch.ones(num_candidates, dtype=torch.bool)
    free[exclude] = False
    pool = torch.nonzero(free).flatten()
    if count > len(pool):
        raise ValueError(f"cannot draw {count} hold-out states from the {len(pool)} left")
    pick = torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed))[:count]
    return pool[pick].sort().values
