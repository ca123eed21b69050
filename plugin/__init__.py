"""vitq: post-training quantization of vision transformers."""
