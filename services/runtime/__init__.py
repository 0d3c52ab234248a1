"""The runtime every stage shares: settings, broker, dead letters, publishing, lineage."""
