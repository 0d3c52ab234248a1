"""Operations: manifests generated from the topic registry and the stage table."""
