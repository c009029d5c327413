"""The reverse proxy: requests passed to upstream groups, answers streamed back."""
