"""Training-framework callbacks (Lightning, Hugging Face Trainer)."""
