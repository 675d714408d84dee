"""Shared by both sides of the trust boundary: what a node and the coordinator must agree on.

Config types and parsing, the message vocabulary, adapter arrays (names, order, delta, apply,
PEFT export), model loading and the model cache, data formats and prompts, evaluation metrics,
SecAgg+ maths (graph, threshold, fixed point) and crypto recipes, atomic files.

May decide: nothing about what leaves a node - it offers the mechanisms (and checks that a
config is well formed); the node decides what it accepts.
Must never import: ``fedtune.node``, ``fedtune.coordinator``, ``fedtune.lab`` or the CLI
(checked by the import contract in ``pyproject.toml``, run by ``make test``).
"""
