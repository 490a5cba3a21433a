"""Direction families, one module each, registered here by name (PEFT's ``tuners/<method>/`` is the model).

A family owns everything about one way of naming "the refusal change" of a LoRA adapter:

- ``build(factors, settings)``: its refusal directions from the refusal adapter's factors {module: (A, B)}
  (or, for a family that ``needs_model``, ``build_from_model(model, tokenizer, factors, settings)``);
- ``random_same_rank(directions, seed)``: its random control, same keys, shapes and ranks, random content;
- ``constraints(named_params, directions)``: the constraint it puts on the attack's trainable LoRA tensors;
- where ``regularizable`` (regularized mode): ``blue_red(blue, red, blue_dir, red_dir)``, Delta = blue - red in
  its space, and ``penalty_inner(constraint, scale)``, the inner product the penalty squares.

The matched random control (``matched``) applies to any family; it registers the same way, marked
``is_control``: its constraints are built by name like a family's, but no variant names it as its family.

Adding a family: a ``Family`` subclass and one ``register_family(MyFamily())`` call (``tests/test_families.py``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from orthoguard.errors import DirectionError

if TYPE_CHECKING:  # config imports this package lazily (its validators), so no import of config at import time
    from orthoguard.config import DirectionsConfig
    from orthoguard.projection import Constraint

Factors = dict[str, tuple[torch.Tensor, torch.Tensor]]  # {module: (A: r x d_in, B: d_out x r)}, fp32
Directions = dict[str, torch.Tensor]  # as saved in a direction file
NamedParams = dict[str, torch.nn.Parameter]


class Family:
    """One direction family. Subclasses set ``name`` and override what the family supports."""

    name: str = ""
    needs_model: bool = False  # built from a model's activations (the pipeline loads it), not from the adapter alone
    regularizable: bool = False  # has a blue - red direction and a penalty (regularized mode)
    is_control: bool = False  # a random control usable with any family, not a family a variant can name

    def build(self, factors: Factors, settings: DirectionsConfig) -> Directions:
        raise DirectionError(f"direction family '{self.name}' is not built from an adapter alone")

    def build_from_model(self, model: Any, tokenizer: Any, factors: Factors, settings: DirectionsConfig) -> Directions:
        return self.build(factors, settings)

    def random_same_rank(self, directions: Directions, seed: int) -> Directions:
        raise DirectionError(f"no random control for family '{self.name}'")

    def constraints(self, named_params: NamedParams, directions: Directions) -> list[Constraint]:
        raise NotImplementedError(f"direction family '{self.name}' defines no constraint")

    def blue_red(self, blue: Factors, red: Factors, blue_dir: Any, red_dir: Any) -> Directions:
        raise regularized_mode_error(self.name)

    def penalty_inner(self, constraint: Constraint, scale: float) -> torch.Tensor:
        raise regularized_mode_error()


FAMILIES: dict[str, Family] = {}


def register_family(family: Family) -> Family:
    """Make ``family`` known by its name (to configs, the CLI, direction files and the constraint builder)."""
    if not family.name:
        raise ValueError(f"{type(family).__name__} has no name")
    FAMILIES[family.name] = family
    return family


def unregister_family(name: str) -> None:
    FAMILIES.pop(name, None)


def get_family(name: str) -> Family:
    if name not in FAMILIES:
        raise DirectionError(f"unknown direction family '{name}'")
    return FAMILIES[name]


def family_names(needs_model: bool | None = None, regularizable: bool | None = None) -> list[str]:
    """The families a variant can name (controls left out), in registration order, optionally filtered by what
    they need or support."""
    return [name for name, f in FAMILIES.items() if not f.is_control
            and needs_model in (None, f.needs_model) and regularizable in (None, f.regularizable)]


def regularized_mode_error(name: str | None = None) -> DirectionError:
    supported = tuple(family_names(regularizable=True))
    return DirectionError(f"regularized mode supports {supported}" + (f", not '{name}'" if name is not None else ""))


# One line per family; each module registers its family. The order is the order of names in messages and choices.
from orthoguard.families import lora_factors  # noqa: E402,F401
from orthoguard.families import delta_w  # noqa: E402,F401
from orthoguard.families import subspace  # noqa: E402,F401
from orthoguard.families import activation  # noqa: E402,F401
from orthoguard.families import matched  # noqa: E402,F401
