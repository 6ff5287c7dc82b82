"""Image encoders: timm backbones (timm.py), torchvision classifiers (torchvision.py) and open_clip models
(clip.py), all on one decode -> normalise -> model loop (base.py); checkpoint reading (weights.py) and CUDA JPEG
decoding (gpu_decode.py) beside them."""
