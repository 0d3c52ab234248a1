"""audit: collects every stage's lineage records and answers into an on-disk analytic store."""
