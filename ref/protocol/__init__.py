"""The sans-I/O protocol core: messages, framing, handshake, group state.

Nothing in this package opens a socket, reads a clock or draws a random
number.  ``ref`` drives it over trio TCP streams; ``sim`` over simulated
links.
"""
