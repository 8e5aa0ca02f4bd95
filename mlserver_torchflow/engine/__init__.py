"""The torch side: find the files, load any MLflow PyTorch format, place it, batch and run it."""
