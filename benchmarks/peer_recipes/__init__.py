"""The peers' own recipes, each run by benchmarks/peers.py in the peer's virtual environment (scripts/peer_venvs.sh):
they import the peer and torch, and of the project only its kNN protocol (pure torch)."""
