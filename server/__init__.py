"""fedsynth: server."""
