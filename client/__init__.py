"""fedsynth: client."""
