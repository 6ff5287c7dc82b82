"""Speech encoders: `whisper:` (CTranslate2, faster-whisper's model format) and `hf-audio:` (transformers)."""
