"""Configuration: nginx-style files parsed, validated and turned into an immutable model."""
