"""generate stage: render the versioned prompt, run the tier, publish the raw generation."""
