"""What travels on the socket between the callback and the server (stdlib only; both sides
import it):

* ``protocol``: the envelope of every message, its JSON encoding and the one
  ``PROTOCOL_VERSION``;
* ``messages``: the body of each request and reply, built and read by both sides;
* ``auth``: signing and verifying requests with a shared secret, and CURVE key files.

The plans inside the bodies are the tuners' vocabulary, :mod:`autolrs.actions`.
"""
