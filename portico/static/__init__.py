"""Static files: path resolution, conditional requests and ranges, MIME types, listings."""
