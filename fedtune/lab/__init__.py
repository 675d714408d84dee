"""For researchers, above both sides: many simulated nodes on one machine (Flower's Simulation
Runtime), the in-process baselines and the federated-vs-baselines comparison.

May import node, coordinator and common code; neither side ever imports the lab.
"""
