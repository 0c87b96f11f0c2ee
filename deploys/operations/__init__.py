"""pyinfra operations, each paired with the facts it reads (``deploys/facts/<same name>.py``)."""
