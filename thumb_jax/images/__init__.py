"""Real images: data loaders, the Flax ResNet34 backbone, fine-tuning and cached embeddings."""
