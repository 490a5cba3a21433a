"""Defences from the harmful fine-tuning literature, as attack modes in the same harness.

One module per defence, holding its math and its ``modes.AttackMode`` (registered on import; ``modes.py`` imports
them):

- ``safelora``: Safe LoRA (Hsu et al., NeurIPS 2024), post hoc: B <- C B in the LoRA modules least similar to
  their projection;
- ``asft``: AsFT (Yang et al., AAAI 2026): lambda * sum ||(I - C) dW||_F^2 added to the loss.

Both build C = V V^T / ||V||_F per module from V = dW_ref, the refusal LoRA's change (``alignment``); their
training hooks are in ``hooks`` (which imports the Trainer).
"""
