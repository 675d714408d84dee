"""SecAgg+ secure aggregation: primitives (crypto), parameters and encoding (params), and the
transport-free protocol steps (protocol).  Wiring into the Flower apps is the next step."""
