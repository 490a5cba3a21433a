"""``matched``: the restriction-matched random control, for any family.

A defence trains first and logs, per LoRA tensor it constrained, the share of its update energy that its
projection removed. The control removes, from each of those tensors, a random k-dimensional subspace of the
tensor's longer side (B: its d_out rows; A: its d_in columns), with k sized from that share
(``matched_random_subspaces``), so that it restricts the attack as much as the defence did, in directions unrelated
to the refusal change. Direction keys: ``<tensor>.left`` (rows) or ``<tensor>.right`` (columns), d x k orthonormal.
"""

from __future__ import annotations

import torch

from orthoguard.errors import DirectionError
from orthoguard.families import Directions, Family, NamedParams, register_family
from orthoguard.projection import TensorConstraint, _check_shape, trainable_tensors

MATCHED_SIDES = ("left", "right")


def longer_side(shape) -> tuple[str, int]:
    """("left", rows) for a tall or square tensor (B, d_out x r), ("right", cols) for a wide one (A, r x d_in)."""
    return ("left", shape[0]) if shape[0] >= shape[1] else ("right", shape[1])


def round_to_goal(wanted: dict[str, float], d: dict[str, int], weight: dict[str, float], goal: float) -> dict[str, int]:
    """Integer ks: the floors of ``wanted``, plus one for the tensors with the largest remainders until the
    energy-weighted total sum(k / d * weight) reaches ``goal`` (never k = d)."""
    k = {n: int(wanted[n]) for n in wanted}
    reached = sum(k[n] / d[n] * weight[n] for n in wanted)
    for n in sorted(wanted, key=lambda n: wanted[n] - k[n], reverse=True):
        step = weight[n] / d[n]
        if goal - reached > step / 2 and k[n] < d[n] - 1 and wanted[n] > k[n]:
            k[n] += 1
            reached += step
    return k


def matched_dimensions(tensors: dict[str, dict], target_share: float | None = None) -> dict[str, tuple[str, int, int]]:
    """{tensor: (side, d, k)}, sorted by tensor: see ``matched_random_subspaces``."""
    names = sorted(tensors)
    energy = {n: float(tensors[n].get("energy", 1.0)) for n in names}
    total = sum(energy.values()) or 1.0
    weight = {n: energy[n] / total for n in names}
    share = {n: float(tensors[n]["removed_energy_share"]) for n in names}
    removed = sum(share[n] * weight[n] for n in names)
    goal = target_share**2 if target_share is not None else removed
    scale = goal / removed if removed > 0 else 0.0
    sides = {n: longer_side(tensors[n]["shape"]) for n in names}
    wanted = {n: min(scale * share[n] * sides[n][1], sides[n][1] - 1) for n in names}
    k = round_to_goal(wanted, {n: d for n, (_, d) in sides.items()}, weight, goal)
    return {n: (*sides[n], k[n]) for n in names}


def matched_random_subspaces(tensors: dict[str, dict], seed: int, target_share: float | None = None) -> Directions:
    """A random control sized to remove what a defence removed.

    ``tensors`` maps each LoRA tensor the defence constrained to ``{"shape": [rows, cols], "removed_energy_share":
    e, "energy": E}`` as its training log records them (e: the share of the tensor's update energy the projection
    removed over training; E: that energy). Each tensor gets a uniformly random subspace of dimension k of its
    longer side (d = rows for B, d_out x r; d = cols for A, r x d_in), removed from its change. A uniformly random
    k-dimensional subspace of R^d holds in expectation k/d of any update's energy, so k ~ c * e * d removes in
    expectation the defence's share of each tensor's energy, in directions unrelated to the refusal change.

    ``target_share`` (the defence's mean per-step share of the update *norm*, s) sets the one factor c = s^2 / R,
    R = sum(e * E) / sum(E), so that the expected per-step norm share equals the defence's. k must be an integer,
    and one dimension of a wide tensor can be more than a tensor's whole share: the ks are the floors of c * e * d,
    plus one for the tensors with the largest remainders until the energy-weighted total sum(k / d * E) / sum(E)
    reaches its target. Every tensor the defence constrained is listed, with k = 0 where it gets nothing, so the
    control's share is measured over the same tensors as the defence's.
    """
    g = torch.Generator().manual_seed(seed)
    out = {}
    for n, (side, d, k) in matched_dimensions(tensors, target_share).items():
        out[f"{n}.{side}"] = torch.linalg.qr(torch.randn(d, k, generator=g))[0].contiguous() if k else torch.zeros(d, 0)
    return out


class RandomSubspaceConstraint(TensorConstraint):
    """The matched control: (I - Q Q^T) applied to a tensor's change on its rows (``left``) or columns (``right``)."""

    def __init__(self, param: torch.nn.Parameter, Q: torch.Tensor, side: str):
        super().__init__(param)
        self.Q = Q  # orthonormal columns: d x k, d the size of the constrained side
        self.side = side  # "left": rows (B, d_out x r); "right": columns (A, r x d_in)

    def remove(self, x: torch.Tensor) -> torch.Tensor:
        return x - self.Q @ (self.Q.T @ x) if self.side == "left" else x - (x @ self.Q) @ self.Q.T


class Matched(Family):
    name = "matched"
    is_control = True

    def constraints(self, named_params: NamedParams, directions: Directions) -> list[RandomSubspaceConstraint]:
        """A matched control constrains the tensors its defence constrained (keys ``<tensor>.left`` / ``.right``)."""
        if not directions:
            return []
        tensors = trainable_tensors(named_params)
        wanted = {k.rsplit(".", 1)[0]: k.rsplit(".", 1)[1] for k in directions}
        unknown = sorted(set(wanted) - set(tensors))
        if unknown or any(side not in MATCHED_SIDES for side in wanted.values()):
            raise DirectionError(f"the matched control's directions name {len(unknown)} tensor(s) that are not trainable "
                                 f"here, e.g. {', '.join(unknown[:3]) or min(wanted)}")
        out = []
        for name, side in sorted(wanted.items()):
            param, Q = tensors[name], directions[f"{name}.{side}"]
            _check_shape(f"{name}.{side}", (Q.shape[0],), (param.shape[0 if side == "left" else 1],))
            out.append(RandomSubspaceConstraint(param, Q.to(param.device, torch.float32), side))
        return out


register_family(Matched())
