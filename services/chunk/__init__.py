"""chunk: splits accepted documents by structure and by the embedder's tokens."""
