"""Reading cell images from the layouts labs and datasets use. See importing.md."""
