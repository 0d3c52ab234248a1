"""Model serving for ragstream: the Triton model repository, its launcher and the async client."""
