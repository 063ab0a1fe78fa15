"""fedsynth: privacy."""
