"""Errors that carry a one-line message for the person at the keyboard."""


class UserError(Exception):
    """Bad input from the user: the CLI prints the message on one line and exits with code 2."""
