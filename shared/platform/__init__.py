"""The platform's HTTP API as seen from the merchant's side: the client adapter and its policies."""
