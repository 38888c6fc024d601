"""Local state: the content-addressed blob store (the cache) and the run lock."""
