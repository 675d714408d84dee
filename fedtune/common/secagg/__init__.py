"""SecAgg+ maths both halves share: primitives (crypto), parameters and encoding (params), and the
transport-free protocol steps (protocol).  The node's stages are ``fedtune/node/secagg.py``, the
coordinator's driver ``fedtune/coordinator/secagg.py``."""
