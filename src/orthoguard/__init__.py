"""orthoguard: does projecting fine-tuning updates away from a refusal direction keep a model refusing?"""

__version__ = "0.1.0"
