"""REST API settings (DRF, drf-spectacular, throttling); imported at the end of settings."""
