"""Text encoders: `st:` (sentence-transformers pipelines, st.py), `hf:` (any Hugging Face encoder with declared
pooling, hf.py), `onnx:` (an exported graph run by onnxruntime, onnx.py) and `hashing:` (weight-free hashed
n-grams, hashing.py); transformer.py holds what st: and hf: share."""
