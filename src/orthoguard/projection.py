"""Projection of LoRA gradients away from refusal directions (the seed's orthogonal mode).

For a trainable tensor with gradient g and its direction u:  g' = g - (<g, u> / ||u||^2) u.
"""

from __future__ import annotations

import torch

from orthoguard.directions import canonical_name
from orthoguard.errors import DirectionError


def project_out(g: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Return g with its component along u removed (u need not be unit-norm)."""
    return g - (torch.sum(g * u) / torch.sum(u * u)) * u


def match_directions(
    named_params: dict[str, torch.nn.Parameter], directions: dict[str, torch.Tensor]
) -> dict[str, tuple[torch.nn.Parameter, torch.Tensor]]:
    """Pair every trainable parameter with its direction; any gap or shape mismatch is an error naming it."""
    trainable = {canonical_name(n): p for n, p in named_params.items() if p.requires_grad}
    unused = sorted(set(directions) - set(trainable))
    unmatched = sorted(set(trainable) - set(directions))
    if not set(directions) & set(trainable):
        raise DirectionError(
            f"the direction file matches no trainable parameter (e.g. direction '{next(iter(sorted(directions)), '-')}' "
            f"vs parameter '{next(iter(sorted(trainable)), '-')}'): was it computed for another model or adapter layout?"
        )
    if unused or unmatched:
        names = (unmatched or unused)[:3]
        what = "trainable parameters without a direction" if unmatched else "directions without a trainable parameter"
        raise DirectionError(f"{len(unmatched or unused)} {what}, e.g. {', '.join(names)}")
    pairs = {}
    for name, param in trainable.items():
        u = directions[name]
        if tuple(u.shape) != tuple(param.shape):
            raise DirectionError(f"direction '{name}' has shape {tuple(u.shape)} but the parameter has {tuple(param.shape)}")
        pairs[name] = (param, u.to(device=param.device, dtype=torch.float32))
    return pairs


class GradientProjector:
    """Removes each direction's component from its parameter's gradient, in place."""

    def __init__(self, named_params: dict[str, torch.nn.Parameter], directions: dict[str, torch.Tensor]):
        self.pairs = match_directions(named_params, directions)

    @torch.no_grad()
    def project_(self) -> dict[str, float]:
        """Project every gradient; return the fraction of the gradient norm that was removed."""
        before = removed = 0.0
        for param, u in self.pairs.values():
            if param.grad is None:
                continue
            g = param.grad.float()
            projected = project_out(g, u)
            before += float(g.pow(2).sum())
            removed += float((g - projected).pow(2).sum())
            param.grad.copy_(projected.to(param.grad.dtype))
        return {"grad_removed_frac": (removed / before) ** 0.5 if before > 0 else 0.0}
