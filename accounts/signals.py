"""Signals other parts of the product listen to."""

from django.dispatch import Signal

# Sent with `user=` after every session of that person was ended and their open
# chat sockets were told to close ("Sign out everywhere").
signed_out_everywhere = Signal()
