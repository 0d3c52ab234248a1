"""The `ragstream` command line: the user's and the operator's interface."""
