"""What a real deployment needs besides the Flower apps: TLS certificates and node keys."""
