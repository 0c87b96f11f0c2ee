"""The program shipped to and run on the host (``python3 -m host.apply STAGE``). Standard library
only; the controller imports the same modules for the rules both sides need."""
