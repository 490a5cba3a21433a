"""Constraints that keep an attack LoRA's weight change away from the refusal change: where they are enforced,
and the checks every family's constraint builder shares.

Each direction family (``orthoguard/families/<family>.py``) defines its constraint, one per LoRA tensor or module:

- ``lora_factors`` (the seed's): per LoRA tensor p with unit direction u:   <p - p0, u> = 0
- ``delta_w``: per module, U = dW_ref / ||dW_ref||_F (kept low-rank as L @ R):   <B A, U>_F = 0
- ``subspace`` / ``activation``: per module, orthonormal U_k (d_out x k):   U_k^T B = 0  (so U_k^T B A = 0)
- the matched random control (``matched``, any family): a random k-dimensional subspace of each constrained
  tensor's longer side removed from its change.

Where the constraint is enforced (``at``):

- ``gradient``: the gradient is projected before ``optimizer.step()`` (the seed's). AdamW's per-coordinate scaling,
  momentum and weight decay act after that, so the step actually taken is not orthogonal: the constraint drifts.
- ``update``: after the step, the forbidden component of the change is removed (for these linear constraints,
  equivalently, the parameters are re-projected), so the constraint holds exactly whatever the optimizer did.
"""

from __future__ import annotations

import re
from typing import Protocol

import torch

from orthoguard.directions import canonical_name
from orthoguard.errors import DirectionError

AT = ("gradient", "update")


def project_out(g: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Return g with its component along u removed (u need not be unit-norm)."""
    denom = torch.sum(u * u)
    return g if denom == 0 else g - (torch.sum(g * u) / denom) * u


def project_out_columns(g: torch.Tensor, U: torch.Tensor) -> torch.Tensor:
    """Return (I - U U^T) g for U with orthonormal columns (d_out x k), g of shape d_out x r."""
    return g - U @ (U.T @ g)


class Constraint(Protocol):
    """What the Projector needs of a family's constraint."""

    def project_gradient_(self) -> None: ...  # remove the forbidden component of the parameters' gradients

    def project_update_(self) -> None: ...  # remove the forbidden component of the change since the start

    def params(self) -> list[torch.nn.Parameter]: ...


class TensorConstraint:
    """A linear constraint on one tensor's change from where training started: ``remove`` maps a gradient or a
    change to its allowed part (subclasses define it); the update placement re-projects the change."""

    def __init__(self, param: torch.nn.Parameter):
        self.param = param
        self.initial = param.detach().float().clone()

    def remove(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def project_gradient_(self) -> None:
        if self.param.grad is not None:
            self.param.grad.copy_(self.remove(self.param.grad.float()))

    def project_update_(self) -> None:
        change = self.param.detach().float() - self.initial
        self.param.data.copy_(self.initial + self.remove(change))

    def params(self) -> list[torch.nn.Parameter]:
        return [self.param]


_LORA = re.compile(r"\.lora_[AB]\.weight$")


def trainable_tensors(named_params: dict[str, torch.nn.Parameter]) -> dict[str, torch.nn.Parameter]:
    """Trainable parameters by their saved (canonical) name."""
    return {canonical_name(n): p for n, p in named_params.items() if p.requires_grad}


def lora_modules(named_params: dict[str, torch.nn.Parameter]) -> dict[str, dict[str, torch.nn.Parameter]]:
    """Trainable LoRA parameters grouped by module: {module: {"A": param, "B": param}}."""
    modules: dict[str, dict[str, torch.nn.Parameter]] = {}
    for name, param in named_params.items():
        name = canonical_name(name)
        if param.requires_grad and _LORA.search(name):
            modules.setdefault(_LORA.sub("", name), {})[name[-8]] = param  # "…lora_A.weight"[-8] == "A"
    return modules


def _check_match(wanted: set[str], available: set[str], what: str, example_param: str) -> None:
    if not wanted & available:
        raise DirectionError(
            f"the direction file matches no trainable parameter (e.g. direction '{min(wanted, default='-')}' "
            f"vs parameter '{example_param}'): was it computed for another model or adapter layout?"
        )
    missing, extra = sorted(available - wanted), sorted(wanted - available)
    if missing:
        raise DirectionError(f"{len(missing)} trainable {what} without a direction, e.g. {', '.join(missing[:3])}")
    if extra:
        raise DirectionError(f"{len(extra)} directions without a trainable {what.rstrip('s')}, e.g. {', '.join(extra[:3])}")


def _check_shape(name: str, got: tuple, want: tuple) -> None:
    if tuple(got) != tuple(want):
        raise DirectionError(f"direction '{name}' has shape {tuple(got)} but the parameter needs {tuple(want)}")


def build_constraints(
    named_params: dict[str, torch.nn.Parameter], directions: dict[str, torch.Tensor], family: str
) -> list[Constraint]:
    """Pair the trainable LoRA tensors with a direction file of ``family`` (the family's module says how); any gap
    or mismatch is an error."""
    from orthoguard.families import get_family  # the families build on this module

    return get_family(family).constraints(named_params, directions)


class Projector:
    """Applies a family's constraints at the gradient or after the update, and measures what it removed."""

    def __init__(self, constraints: list[Constraint], at: str = "update", names: dict[int, str] | None = None):
        if at not in AT:
            raise DirectionError(f"projection.at must be one of {AT}, got '{at}'")
        self.constraints, self.at = constraints, at
        self.params = list({id(p): p for c in constraints for p in c.params()}.values())
        names = names or {}
        self.names = [names.get(id(p), f"param{i}") for i, p in enumerate(self.params)]
        # per tensor, summed over steps: [energy removed, energy of the unconstrained gradient or update]
        self.energy: dict[str, list[float]] = {n: [0.0, 0.0] for n in self.names}
        self._before: list[torch.Tensor] = []

    def removed_energy_shares(self) -> dict[str, float]:
        """Per constrained tensor: the share of its gradient (or update) energy that the projection removed, over
        all steps so far (what a matched random control is sized from)."""
        return {n: (removed / total if total > 0 else 0.0) for n, (removed, total) in self.energy.items()}

    def _account(self, before: list, after: list) -> float:
        """Add each tensor's removed and total energy (``before``: unconstrained, ``after``: constrained; None: a
        tensor without a gradient) and return the share of the norm removed over all tensors this step."""
        kept = [(n, b, a.float()) for n, b, a in zip(self.names, before, after) if b is not None]
        if not kept:
            return 0.0
        names, b, a = zip(*kept)
        # torch._foreach_*: one call over all tensors instead of ~5 small ops and a sync per tensor (~80 ms a step
        # for SmolLM2's 420 LoRA tensors on a 2-core CPU, 10x the projection itself)
        removed = _squared_norms(torch._foreach_sub(list(b), list(a)))
        total = _squared_norms(list(b))
        for name, r, t in zip(names, removed, total):
            self.energy[name][0] += r
            self.energy[name][1] += t
        return _removed_frac(sum(removed), sum(total))

    @torch.no_grad()
    def before_step(self) -> dict[str, float]:
        """Call after clipping, before ``optimizer.step()``."""
        if self.at == "update":
            self._before = _float_copies(self.params)
            return {}
        grads = [p.grad.detach().float().clone() if p.grad is not None else None for p in self.params]
        for c in self.constraints:
            c.project_gradient_()
        return {"grad_removed_frac": self._account(grads, [p.grad for p in self.params])}

    @torch.no_grad()
    def after_step(self) -> dict[str, float]:
        """Call right after ``optimizer.step()``."""
        if self.at != "update":
            return {}
        stepped = _float_copies(self.params)
        for c in self.constraints:
            c.project_update_()
        changes = torch._foreach_sub(stepped, self._before)
        kept = torch._foreach_sub([p.detach().float() for p in self.params], self._before)
        return {"update_removed_frac": self._account(changes, kept)}


def _float_copies(params: list[torch.nn.Parameter]) -> list[torch.Tensor]:
    return [p.detach().float().clone() for p in params]


def _squared_norms(tensors: list[torch.Tensor]) -> list[float]:
    """Each tensor's squared Frobenius norm, in one sync."""
    return (torch.stack(torch._foreach_norm(tensors)).double() ** 2).tolist()


def _removed_frac(removed: float, total: float) -> float:
    return (removed / total) ** 0.5 if total > 0 else 0.0


# The constraint classes live with their families; these names stay importable from here.
_MOVED = {"FactorConstraint": "lora_factors", "DeltaWConstraint": "delta_w", "OutputSubspaceConstraint": "subspace",
          "RandomSubspaceConstraint": "matched", "MATCHED_SIDES": "matched"}


def __getattr__(name: str):
    if name in _MOVED:
        import importlib

        return getattr(importlib.import_module(f"orthoguard.families.{_MOVED[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
