"""Registry access: transport policy (TLS, retries, host gate), auth, and the API client."""
