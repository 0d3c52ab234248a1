"""validate: checks a generated answer (schema, citations, grounding, PII) before publishing."""
