"""Constraints that keep an attack LoRA's weight change away from the refusal change.

One constraint per LoRA tensor or module, by direction family (see ``directions.py`` for how each is built):

- ``lora_factors`` (the seed's): per LoRA tensor p with unit direction u:   <p - p0, u> = 0
- ``delta_w``: per module, U = dW_ref / ||dW_ref||_F (kept low-rank as L @ R):   <B A, U>_F = 0
- ``subspace`` / ``activation``: per module, orthonormal U_k (d_out x k):   U_k^T B = 0  (so U_k^T B A = 0)

Where the constraint is enforced (``at``):

- ``gradient``: the gradient is projected before ``optimizer.step()`` (the seed's). AdamW's per-coordinate scaling,
  momentum and weight decay act after that, so the step actually taken is not orthogonal: the constraint drifts.
- ``update``: after the step, the forbidden component of the change is removed (for these linear constraints,
  equivalently, the parameters are re-projected), so the constraint holds exactly whatever the optimizer did.

A matched random control (``matched``) removes, from each LoRA tensor it constrains, a random k-dimensional subspace
of the tensor's longer side (B: its d_out rows; A: its d_in columns), with k sized from the share of that tensor's
update energy that the defence it controls removed (see ``directions.matched_random_subspaces``).

For ``delta_w`` the constraint is bilinear in (A, B): at ``update`` B is projected against M = U A^T for the current
A, which makes <B A, U> = <B, U A^T> = 0 exactly; at ``gradient`` both gradients are projected on the tangent space
(B's against U A^T, A's against B^T U), which holds only to first order.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

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


@dataclass
class FactorConstraint:
    """The seed's: one unit direction per LoRA tensor."""

    param: torch.nn.Parameter
    u: torch.Tensor
    initial: torch.Tensor = field(init=False)

    def __post_init__(self):
        self.initial = self.param.detach().float().clone()

    def project_gradient_(self) -> None:
        if self.param.grad is not None:
            self.param.grad.copy_(project_out(self.param.grad.float(), self.u))

    def project_update_(self) -> None:
        change = self.param.detach().float() - self.initial
        self.param.data.copy_(self.initial + project_out(change, self.u))

    def params(self):
        return [self.param]


@dataclass
class OutputSubspaceConstraint:
    """U^T B = 0 for a module's LoRA B (families subspace, activation)."""

    B: torch.nn.Parameter
    U: torch.Tensor
    initial: torch.Tensor = field(init=False)

    def __post_init__(self):
        self.initial = self.B.detach().float().clone()

    def project_gradient_(self) -> None:
        if self.B.grad is not None:
            self.B.grad.copy_(project_out_columns(self.B.grad.float(), self.U))

    def project_update_(self) -> None:
        change = self.B.detach().float() - self.initial
        self.B.data.copy_(self.initial + project_out_columns(change, self.U))

    def params(self):
        return [self.B]


@dataclass
class DeltaWConstraint:
    """<B A, U>_F = 0 with U = L @ R (never materialised as d_out x d_in)."""

    A: torch.nn.Parameter
    B: torch.nn.Parameter
    L: torch.Tensor  # d_out x r_ref
    R: torch.Tensor  # r_ref x d_in

    def _m(self) -> torch.Tensor:  # U A^T, d_out x r
        return self.L @ (self.R @ self.A.detach().float().T)

    def _n(self) -> torch.Tensor:  # B^T U, r x d_in
        return (self.B.detach().float().T @ self.L) @ self.R

    def project_gradient_(self) -> None:
        if self.B.grad is not None:
            self.B.grad.copy_(project_out(self.B.grad.float(), self._m()))
        if self.A.grad is not None:
            self.A.grad.copy_(project_out(self.A.grad.float(), self._n()))

    def project_update_(self) -> None:
        self.B.data.copy_(project_out(self.B.detach().float(), self._m()))

    def params(self):
        return [self.A, self.B]


@dataclass
class RandomSubspaceConstraint:
    """The matched control: (I - Q Q^T) applied to a tensor's change on its rows (``left``) or columns (``right``)."""

    param: torch.nn.Parameter
    Q: torch.Tensor  # orthonormal columns: d x k, d the size of the constrained side
    side: str  # "left": rows (B, d_out x r); "right": columns (A, r x d_in)
    initial: torch.Tensor = field(init=False)

    def __post_init__(self):
        self.initial = self.param.detach().float().clone()

    def _remove(self, x: torch.Tensor) -> torch.Tensor:
        return x - self.Q @ (self.Q.T @ x) if self.side == "left" else x - (x @ self.Q) @ self.Q.T

    def project_gradient_(self) -> None:
        if self.param.grad is not None:
            self.param.grad.copy_(self._remove(self.param.grad.float()))

    def project_update_(self) -> None:
        change = self.param.detach().float() - self.initial
        self.param.data.copy_(self.initial + self._remove(change))

    def params(self):
        return [self.param]


Constraint = FactorConstraint | OutputSubspaceConstraint | DeltaWConstraint | RandomSubspaceConstraint
_LORA = re.compile(r"\.lora_[AB]\.weight$")


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
    """Pair the trainable LoRA tensors with a direction file of ``family``; any gap or mismatch is an error."""
    modules = lora_modules(named_params)
    example = next(iter(sorted(modules)), "-")
    if family == "lora_factors":
        tensors = {canonical_name(n): p for n, p in named_params.items() if p.requires_grad}
        _check_match(set(directions), set(tensors), "parameters", next(iter(sorted(tensors)), "-"))
        out = []
        for name, param in tensors.items():
            _check_shape(name, directions[name].shape, param.shape)
            out.append(FactorConstraint(param, directions[name].to(param.device, torch.float32)))
        return out
    if family == "delta_w":
        wanted = {k[: -len(".L")] for k in directions if k.endswith(".L")}
        _check_match(wanted, set(modules), "modules", example)
        out = []
        for name in sorted(wanted):
            A, B = modules[name]["A"], modules[name]["B"]
            L, R = directions[f"{name}.L"], directions[f"{name}.R"]
            _check_shape(f"{name}.L", (L.shape[0], R.shape[1]), (B.shape[0], A.shape[1]))
            out.append(DeltaWConstraint(A, B, L.to(B.device, torch.float32), R.to(B.device, torch.float32)))
        return out
    if family in ("subspace", "activation"):
        wanted = {k[: -len(".U")] for k in directions if k.endswith(".U")}
        # activation constrains only the modules that write into the residual stream; the rest train freely
        available = set(modules) if family == "subspace" else {m for m in modules if m.endswith(("o_proj", "down_proj"))}
        _check_match(wanted, available, "modules", example)
        out = []
        for name in sorted(wanted):
            B, U = modules[name]["B"], directions[f"{name}.U"]
            _check_shape(f"{name}.U", (U.shape[0],), (B.shape[0],))
            out.append(OutputSubspaceConstraint(B, U.to(B.device, torch.float32)))
        return out
    if family == "matched":
        return _matched_constraints(named_params, directions) if directions else []
    raise DirectionError(f"unknown direction family '{family}'")


MATCHED_SIDES = ("left", "right")


def _matched_constraints(named_params: dict[str, torch.nn.Parameter], directions: dict[str, torch.Tensor]) -> list[Constraint]:
    """A matched control constrains the tensors its defence constrained (keys ``<tensor>.left`` / ``.right``)."""
    tensors = {canonical_name(n): p for n, p in named_params.items() if p.requires_grad}
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
        for name, b, a in zip(self.names, before, after):
            if b is not None:
                self.energy[name][0] += float((b - a.float()).pow(2).sum())
                self.energy[name][1] += float(b.pow(2).sum())
        return _removed_frac(before, after)

    @torch.no_grad()
    def before_step(self) -> dict[str, float]:
        """Call after clipping, before ``optimizer.step()``."""
        if self.at == "update":
            self._before = [p.detach().float().clone() for p in self.params]
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
        stepped = [p.detach().float().clone() for p in self.params]
        for c in self.constraints:
            c.project_update_()
        changes = [s - b for s, b in zip(stepped, self._before)]
        kept = [p.detach().float() - b for p, b in zip(self.params, self._before)]
        return {"update_removed_frac": self._account(changes, kept)}


def _removed_frac(before: list, after: list) -> float:
    total = removed = 0.0
    for b, a in zip(before, after):
        if b is None:
            continue
        total += float(b.pow(2).sum())
        removed += float((b - a.float()).pow(2).sum())
    return (removed / total) ** 0.5 if total > 0 else 0.0

