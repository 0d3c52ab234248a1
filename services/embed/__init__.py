"""embed: chunks and questions in, vectors out, from the Triton embedder."""
