"""What runs at a hospital or bank, next to its private records, and decides what leaves it.

The Flower ClientApp, the node's data, its local round (training, Opacus DP-SGD), its privacy
ledger and budget, its half of SecAgg+ and its authentication key.

Decides what protects the node's records: which records it reads, its privacy budget and
ledger, whether it trains, what it sends (only a clipped LoRA delta, masked).  These decisions
read the node config and the node's own state dir (``policy.py``); what the coordinator sends
(run config, messages) is a request, checked here.
Must never import: ``fedtune.coordinator`` or ``fedtune.lab`` (import contract, ``make test``).
"""
