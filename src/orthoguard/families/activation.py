"""``activation``: the refusal direction r in the residual stream (difference of mean activations, Arditi et al.
2024), for the modules that write into the stream (``RESIDUAL_WRITERS``).

- Directions: r / ||r|| as a one-column subspace ``<module>.U`` (d_model x 1) for every residual writer; computed
  from a model (``needs_model``): mean activation at the last prompt token after ``activation_layer``, harmful
  minus harmless instructions.
- Same-rank random control: one shared random unit direction, like the one shared refusal direction.
- Constraint: the subspace family's U^T B = 0 on the residual writers; the other modules train freely.
"""

from __future__ import annotations

import logging

import torch

from orthoguard.errors import DataError, DirectionError
from orthoguard.families import Directions, Factors, Family, register_family
from orthoguard.families.subspace import output_subspace_constraints

log = logging.getLogger(__name__)

RESIDUAL_WRITERS = ("o_proj", "down_proj")  # the modules whose output is added to the residual stream


def writes_residual(module: str) -> bool:
    return module.endswith(RESIDUAL_WRITERS)


def activation_directions(direction: torch.Tensor, module_shapes: dict[str, int]) -> Directions:
    """The residual-stream refusal direction r, as a one-column subspace for every module writing into the stream."""
    r = (direction.float() / direction.float().norm()).reshape(-1, 1)
    writers = {m: d for m, d in module_shapes.items() if writes_residual(m)}
    bad = sorted(m for m, d in writers.items() if d != r.shape[0])
    if bad:
        raise DirectionError(f"module {bad[0]} writes {writers[bad[0]]} features, the direction has {r.shape[0]}")
    return {f"{m}.U": r.clone() for m in writers}


@torch.inference_mode()
def refusal_activation_direction(model, tokenizer, harmful: list[str], harmless: list[str], layer: float, batch_size: int = 16):
    """Difference of mean residual-stream activations at the last prompt token (Arditi et al. 2024)."""
    from orthoguard.generation import chat_prompt  # transformers: only where a model is at hand

    n_layers = model.config.num_hidden_layers
    index = int(layer) if layer >= 1 else max(1, round(layer * n_layers))
    if index > n_layers:
        raise DataError(f"directions.activation_layer {layer} is beyond the model's {n_layers} layers")
    tokenizer.padding_side = "left"

    def mean_activation(prompts: list[str]) -> torch.Tensor:
        total = None
        for start in range(0, len(prompts), batch_size):
            texts = [chat_prompt(tokenizer, p) for p in prompts[start : start + batch_size]]
            batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
            hidden = model(**batch, output_hidden_states=True).hidden_states[index][:, -1, :].float().sum(0)
            total = hidden if total is None else total + hidden
        return total / len(prompts)

    return (mean_activation(harmful) - mean_activation(harmless)).cpu(), index


def random_residual_direction(directions: Directions, seed: int) -> Directions:
    """One random unit direction shared by every key, like the one shared refusal direction."""
    g = torch.Generator().manual_seed(seed)
    r = torch.randn(*next(iter(directions.values())).shape, generator=g)
    r /= r.norm()
    return {k: r.clone() for k in directions}


class Activation(Family):
    name = "activation"
    needs_model = True

    def build_from_model(self, model, tokenizer, factors: Factors, settings) -> Directions:
        """r from ``activation_prompts`` harmful and harmless training instructions, for the adapter's writers."""
        from orthoguard import data as D  # datasets and transformers: only where a model is at hand

        n = settings.activation_prompts
        r, layer = refusal_activation_direction(model, tokenizer, D.load_harmful_instructions("train")[:n],
                                                D.load_harmless("train")[:n], settings.activation_layer)
        log.info("activation direction from layer %d, %d + %d prompts", layer, n, n)
        return activation_directions(r, {m: B.shape[0] for m, (_, B) in factors.items()})

    def random_same_rank(self, directions, seed):
        return random_residual_direction(directions, seed)

    def constraints(self, named_params, directions):
        return output_subspace_constraints(named_params, directions, constrained=writes_residual)


register_family(Activation())
