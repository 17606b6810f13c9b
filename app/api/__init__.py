"""The JSON API (`/api/v1/`), sharing the portal's sign-in, permission checks and actions."""
