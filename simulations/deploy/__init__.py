"""Run the project's Flower apps on Flower's deployment engine (SuperLink + SuperNodes)."""
