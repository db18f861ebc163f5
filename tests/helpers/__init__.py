"""Test helpers (fixtures data writers, callbacks used through Hydra overrides)."""
