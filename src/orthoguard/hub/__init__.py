"""Push LoRA adapters to the Hugging Face Hub (private by default, with a model card) and pull them back.

    orthoguard push --namespace NS --adapter refusal=runs/x/adapters/refusal --adapter vanilla=... [--run-dir runs/x]
    orthoguard pull NS/orthoguard-vanilla --dest adapters/vanilla

Each adapter NAME goes to the model repository ``{namespace}/{prefix}-{name}`` (prefix ``orthoguard`` by default;
``--prefix ''`` gives ``{namespace}/{name}``). Repositories are created **private** unless ``--public`` is given,
and a push without ``--public`` to an existing public repository is refused: attack adapters remove safety
behaviour. Only safetensors adapters are uploaded and downloaded; a folder holding a pickle is refused.

The token is the ``token`` argument, else ``HF_TOKEN``, else the huggingface_hub login. It is never printed,
logged, written or put into an error message: hub client errors come back as one line with every token-like
substring masked.
"""

from __future__ import annotations

import logging

# The package's parts, by concern; every name the single module hub.py had is importable from here.
from orthoguard.hub.adapters import (_HUB_ID_RE, _NAME_RE, ALLOWED_PATTERNS, DEFAULT_PREFIX, PICKLE_SUFFIXES,  # noqa: F401
                                     REQUIRED_FILES, STALE_PATTERNS, _allowed, _stage, repo_id_for, validate_adapter)
from orthoguard.hub.cards import (ATTACK_WARNING, BASE_MODEL_ALIASES, CARD_TAGS, _base_model,  # noqa: F401
                                  _dataset_ids, _find_loss_log, _modules, _read_json, _read_yaml,
                                  _summary_row_name, build_model_card, is_attack_adapter)
from orthoguard.hub.cli import _parse_adapters, cmd_pull, cmd_push, register_cli  # noqa: F401
from orthoguard.hub.safety import _TOKEN_RE, HubError, _hub_call, _one_line, mask_secrets, resolve_token  # noqa: F401
from orthoguard.hub.transfer import _default_api, _push_one, pull_adapter, push_adapters  # noqa: F401

log = logging.getLogger(__name__)
