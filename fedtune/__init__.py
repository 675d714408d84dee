"""fedtune: federated, privacy-preserving LoRA fine-tuning of LLMs on Flower.

The package tree is the threat model: ``node`` (runs at each organisation, decides what leaves
it), ``coordinator`` (runs the federation, sees only what nodes chose to send), ``common``
(what both must agree on) and ``lab`` (simulation and baselines for researchers, above both).
"""
