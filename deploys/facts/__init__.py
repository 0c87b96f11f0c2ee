"""pyinfra facts: each reads what it needs of a host in one command."""
