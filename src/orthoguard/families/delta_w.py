"""``delta_w``: per module, U = dW_ref / ||dW_ref||_F with dW_ref = (alpha/r) B_ref A_ref, kept as L @ R (never a
dense d_out x d_in matrix).

- Directions: L = B / ||B A||_F and R = A (the LoRA scale cancels).
- Same-rank random control: random L, R of the same shapes, scaled so that ||L R||_F = 1.
- Constraint, per module:   <B A, U>_F = 0. It is bilinear in (A, B): at ``update`` B is projected against
  M = U A^T for the current A, which makes <B A, U> = <B, U A^T> = 0 exactly; at ``gradient`` both gradients are
  projected on the tangent space (B's against U A^T, A's against B^T U), which holds only to first order.
- Regularized mode: Delta_W = dW_blue - dW_red per module (low-rank, normalized), and the penalty
  (lambda / 2) * sum_modules <dW_attack, Delta_W>_F^2 with dW_attack = (alpha/r) B A.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from orthoguard.diagnostics import lora_scale
from orthoguard.directions import lowrank_norm
from orthoguard.families import Directions, Factors, Family, NamedParams, register_family
from orthoguard.projection import _check_match, _check_shape, lora_modules, project_out


def delta_w_directions(factors: Factors, settings=None) -> Directions:
    """Per module U = dW_ref / ||dW_ref||_F = L @ R with L = B / ||B A||_F and R = A (the LoRA scale cancels)."""
    out = {}
    for module, (A, B) in factors.items():
        norm = lowrank_norm(B, A)
        if norm > 0:
            out[f"{module}.L"], out[f"{module}.R"] = (B / norm).contiguous(), A.contiguous()
    return out


def random_low_rank(directions: Directions, seed: int) -> Directions:
    """Per module (sorted ``.L`` keys) a random L and R of the same shapes, with ||L R||_F = 1."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for key in sorted(directions):
        if key.endswith(".L"):
            module = key[: -len(".L")]
            L = torch.randn(*directions[key].shape, generator=g)
            R = torch.randn(*directions[f"{module}.R"].shape, generator=g)
            out[key], out[f"{module}.R"] = L / lowrank_norm(L, R), R
    return out


def blue_minus_red_delta_w(blue: Factors, red: Factors, s_blue: float, s_red: float) -> Directions:
    """Delta_W = s_blue B_blue A_blue - s_red B_red A_red per module, as L = [s_blue B_blue, -s_red B_red] and
    R = [A_blue; A_red], normalized so that ||L R||_F = 1."""
    out = {}
    for module in blue:
        (Ab, Bb), (Ar, Br) = blue[module], red[module]
        L, R = torch.cat([s_blue * Bb, -s_red * Br], dim=1), torch.cat([Ab, Ar], dim=0)
        norm = lowrank_norm(L, R)
        if norm > 0:
            out[f"{module}.L"], out[f"{module}.R"] = L / norm, R
    return out


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


class DeltaW(Family):
    name = "delta_w"
    regularizable = True

    def build(self, factors, settings):
        return delta_w_directions(factors, settings)

    def random_same_rank(self, directions, seed):
        return random_low_rank(directions, seed)

    def constraints(self, named_params: NamedParams, directions: Directions) -> list[DeltaWConstraint]:
        """One constraint per module with an ``.L``/``.R`` pair; every trainable LoRA module needs one."""
        modules = lora_modules(named_params)
        wanted = {k[: -len(".L")] for k in directions if k.endswith(".L")}
        _check_match(wanted, set(modules), "modules", next(iter(sorted(modules)), "-"))
        out = []
        for name in sorted(wanted):
            A, B = modules[name]["A"], modules[name]["B"]
            L, R = directions[f"{name}.L"], directions[f"{name}.R"]
            _check_shape(f"{name}.L", (L.shape[0], R.shape[1]), (B.shape[0], A.shape[1]))
            out.append(DeltaWConstraint(A, B, L.to(B.device, torch.float32), R.to(B.device, torch.float32)))
        return out

    def blue_red(self, blue, red, blue_dir, red_dir):
        return blue_minus_red_delta_w(blue, red, lora_scale(blue_dir), lora_scale(red_dir))

    def penalty_inner(self, constraint: DeltaWConstraint, scale: float) -> torch.Tensor:
        """<dW_attack, Delta_W>_F = scale * tr((B^T L) (R A^T)) for one module (differentiable)."""
        c = constraint
        return scale * torch.trace((c.B.float().T @ c.L) @ (c.R @ c.A.float().T))


register_family(DeltaW())
