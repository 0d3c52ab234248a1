"""route: owns the vector index; retrieves for a tenant; decides how a question is answered."""
