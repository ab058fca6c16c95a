"""Real images: binary datasets, the Flax ResNet34 backbone, fine-tuning and cached embeddings.

  datasets        `load_dataset("cifar10" | "celeba", ...)`
  sources         Split / BinaryDataset, shared decoding, tfds and cache helpers of the loaders
  cifar10         binary CIFAR-10 (airplane vs truck) from the official files or tfds
  celeba          binary CelebA (one attribute) from the official files or tfds
  configs         `Config` and the paper / cpu / tiny recipes
  resnet          torchvision-layout ResNet + MLP head (Flax Linen)
  torch_convert   torchvision checkpoints -> backbone variables
  input_pipeline  padded batches, training-set caps, resizing, split checks, augmentation
  train           train / eval steps and `train_and_evaluate` (orbax checkpoints, resume)
  embeddings      penultimate-layer embeddings and their disk cache
"""
