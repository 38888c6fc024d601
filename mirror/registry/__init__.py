"""Registry access: transport policy (TLS, retries, host gate), auth, and the API client."""

from mirror.registry.tls import import_aiohttp

import_aiohttp()  # before any module here imports it: see mirror.registry.tls
