"""What the coordinator runs: the Flower ServerApp and everything it drives.

Round orchestration over Flower's Grid, strategies, the coordinator's half of SecAgg+,
checkpoints and resume, run recording and reports, the SuperLink's TLS certificates.

May decide: which nodes to ask, how to combine what they send, when a round or run ends.
Must never read: a node's records, its ledger or any single node's update - it gets the
SecAgg+ sum.  Must never import: ``fedtune.node`` or ``fedtune.lab`` (import contract,
``make test``).
"""
