"""Media decoding shared by sources and encoders: images (images.py) and their worker processes (workers.py)."""
