"""ragstream's data contracts: versioned event models and the topic registry."""
